"""Image folders: find every image below a root, decode any common format to RGB, skip the unusable.

A root may hold class sub-folders (``root/<class>/*.jpg``, labels follow sorted class names) or
images directly or at any depth (label 0 for all when there are no class folders).
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

__all__ = ["IMG_EXTENSIONS", "ImageDecodeError", "load_rgb", "class_folders", "find_images", "ImageList"]

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# Decompression-bomb guard of PIL raised: 12k x 12k photos are legitimate; 1 Gpx is not.
MAX_PIXELS = 1 << 30
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageDecodeError(DataError):
    """One file that cannot be turned into an RGB image (loops over many files log and skip it)."""


def load_rgb(path: str | os.PathLike, max_side: int | None = None) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB PIL image, EXIF orientation applied.

    Grayscale, palette, RGBA (composited on white), CMYK, 16-bit and float images are converted.
    With ``max_side``, large images are reduced while decoding (JPEG draft mode) and then resized
    so that their longer side is at most ``max_side``. Raises ``ImageDecodeError`` naming the file.
    """
    try:
        _require_regular_file(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's palette/EXIF chatter; failures still raise
            with Image.open(path) as im:
                if max_side and im.format == "JPEG":
                    im.draft("RGB", (max_side, max_side))
                im.load()
                im = ImageOps.exif_transpose(im)
                im = _to_rgb(im)
    except Exception as e:  # a malformed file can make a PIL plugin raise almost anything
        raise ImageDecodeError(f"{path}: {type(e).__name__}: {e}") from None
    if im.width < 1 or im.height < 1:
        raise ImageDecodeError(f"{path}: empty image")
    if max_side and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
    return im


def _require_regular_file(path) -> None:
    """A FIFO or device named ``*.jpg`` would block or never end when read: refuse it up front."""
    if isinstance(path, (str, os.PathLike)) and not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError("not a regular file")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / peak * 255.0 if peak != 255.0 else a, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("RGB")


def class_folders(root: str | os.PathLike, exclude: frozenset[Path] = frozenset()) -> list[str]:
    """The sorted names of ``root``'s visible sub-folders (but ``exclude``, resolved paths): its
    classes when it holds no loose images."""
    here = Path(root).resolve()
    return sorted(d.name for d in Path(root).iterdir()
                  if d.is_dir() and not d.name.startswith(".") and _walkable(here, d, exclude))


def find_images(root: str | os.PathLike, exclude: Sequence[str | os.PathLike] = ()
                ) -> tuple[list[Path], list[int], list[str]]:
    """``(paths, labels, classes)`` of every image file below ``root``, in a stable order.

    Folders in ``exclude`` are skipped (a training run's own output folder inside its data).
    Raises ``DataError`` with the folder's name when it is missing or holds no image.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {str(root)!r} does not exist or is not a folder")
    skip = frozenset(Path(p).expanduser().resolve() for p in exclude)
    subdirs = class_folders(root, skip)
    loose = _scan(root, recursive=False)
    if subdirs and not loose:
        classes = subdirs
        paths, labels = [], []
        for i, name in enumerate(classes):
            found = _scan(root / name, recursive=True, skip=skip)
            paths += found
            labels += [i] * len(found)
    else:
        classes = [""]
        paths = _scan(root, recursive=True, skip=skip)
        labels = [0] * len(paths)
    if not paths:
        raise DataError(f"no images found in {str(root)!r} (looked for {', '.join(IMG_EXTENSIONS)}, "
                        f"searched sub-folders too){_other_files(root)}")
    return paths, labels, classes


def _other_files(root: Path, limit: int = 10000) -> str:
    """``"; it holds 3 .heic, 1 .txt files"``: what the folder has instead of images (HEIC photos,
    RAW files, a zip to unpack), counted over at most ``limit`` files."""
    counts: Counter = Counter()
    for _, _, filenames in os.walk(root):
        counts.update(Path(f).suffix.lower() or "(no extension)" for f in filenames)
        if sum(counts.values()) >= limit:
            break
    if not counts:
        return "; it holds no files"
    listed = ", ".join(f"{n} {ext}" for ext, n in counts.most_common(5))
    return f"; it holds {listed} files: convert images to JPEG or PNG, unpack archives"


def _scan(folder: Path, recursive: bool, skip: frozenset[Path] = frozenset()) -> list[Path]:
    out = []
    seen = set()  # (device, inode) of the folders walked: two links to one folder give its images once
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        here = Path(dirpath).resolve()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and _walkable(here, Path(dirpath) / d, skip))
        out += [Path(dirpath) / f for f in sorted(filenames)
                if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith(".")]
        if not recursive:
            break
    return out


def _walkable(here: Path, sub: Path, skip: frozenset[Path]) -> bool:
    """Whether to descend into ``sub`` of the (resolved) folder ``here``: not an excluded folder,
    and not a symlink back to ``here`` or one of its parents (a loop that repeats the tree)."""
    real = sub.resolve()
    return real not in skip and not here.is_relative_to(real)


@dataclass
class ImageList:
    """The images of a folder, with labels; ``bad`` collects files found unusable while decoding."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    root: Path
    bad: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, root: str | os.PathLike, exclude: Sequence[str | os.PathLike] = ()) -> "ImageList":
        paths, labels, classes = find_images(root, exclude)
        return cls(paths, labels, classes, Path(root))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_labels(self) -> bool:
        return len(self.classes) > 1 or self.classes != [""]
