"""Attention over the frames of a video or a folder of frames, written as an animated GIF or MP4.

GIFs and frame folders need only PIL; video files use ``imageio`` + ``imageio-ffmpeg``
(``pip install 'dinokit[video]'``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence

from ..data import find_images, load_rgb
from ..errors import ConfigError, DataError, DinokitError
from .attention import colorize, compute_attention, mask_overlay, overlay

__all__ = [
    "VIDEO_SUFFIXES",
    "attention_frame",
    "attention_video",
    "read_frames",
    "require_imageio",
    "source_fps",
    "write_animation",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
_INSTALL_HINT = "pip install 'dinokit[video]'"


def require_imageio():
    """``imageio.v2``, or a one-line error naming the install command."""
    try:
        import imageio.v2 as iio
        import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary imageio needs for video)
    except ImportError:
        raise DinokitError(f"video files need imageio and imageio-ffmpeg: {_INSTALL_HINT} "
                           f"(or use a folder of frames / a .gif)") from None
    return iio


def read_frames(path: str | os.PathLike, max_frames: int | None = None) -> Iterator[Image.Image]:
    """RGB frames of a frame folder (sorted file names, sub-folders too), a GIF or a video file."""
    path = Path(path)
    if path.is_dir():
        frames = (load_rgb(f) for f in find_images(path)[0])
    elif path.is_file() and path.suffix.lower() == ".gif":
        frames = _gif_frames(path)
    elif path.is_file():
        frames = _video_frames(path)
    else:
        raise DataError(f"input {str(path)!r} is neither a folder of frames nor a video file")
    for i, frame in enumerate(frames):
        if max_frames is not None and i >= max_frames:
            return
        yield frame


def _gif_frames(path: Path) -> Iterator[Image.Image]:
    with Image.open(path) as im:
        for frame in ImageSequence.Iterator(im):
            yield frame.convert("RGB")


def _reason(error: Exception) -> str:
    """imageio's first line, plus ffmpeg's own last line when it appended its stderr (banner,
    build flags and all) to the message."""
    head, _, ffmpeg = str(error).partition("=== stderr ===")
    lines = [line.strip() for line in ffmpeg.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return " ".join(head.split()) + (f" (ffmpeg: {last})" if last else "")


def _video_frames(path: Path) -> Iterator[Image.Image]:
    iio = require_imageio()
    try:
        reader = iio.get_reader(str(path))
    except Exception as e:  # noqa: BLE001  (imageio raises various types for unreadable files)
        raise DataError(f"cannot read video {path}: {_reason(e)}") from None
    with reader:
        for frame in reader:
            yield Image.fromarray(np.asarray(frame)[..., :3]).convert("RGB")


def source_fps(path: str | os.PathLike, default: float = 10.0) -> float:
    """Frame rate of a video or GIF input; ``default`` for a folder or when unknown."""
    path = Path(path)
    try:
        if path.is_file() and path.suffix.lower() == ".gif":
            with Image.open(path) as im:
                ms = im.info.get("duration") or 0
            return 1000.0 / ms if ms else default
        if path.is_file():
            with require_imageio().get_reader(str(path)) as reader:
                return float(reader.get_meta_data().get("fps") or default)
    except (OSError, ValueError, RuntimeError):
        pass
    return default


def attention_frame(model: torch.nn.Module, frame: Image.Image, image_size=None,
                    threshold: float | None = None) -> np.ndarray:
    """Frame and its attention side by side, ``uint8 [H, 2W, 3]``.

    Right half: mean attention over heads (inferno) blended on the frame or, with ``threshold``,
    the thresholded masks of all heads.
    """
    maps = compute_attention(model, frame, image_size, threshold)
    if maps.masks is not None:
        right = mask_overlay(maps.image, maps.masks, alpha=0.35)
    else:
        right = overlay(maps.image, colorize(maps.mean, "inferno"), 0.6)
    return np.concatenate([maps.image, right], axis=1)


def write_animation(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float) -> Path:
    """Write ``uint8 [H, W, 3]`` frames as an animated GIF (PIL) or a video (imageio-ffmpeg)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif",) + VIDEO_SUFFIXES:
        raise ConfigError(f"output {path.name!r}: use a .gif or .mp4 file name "
                          f"(also {', '.join(VIDEO_SUFFIXES[1:])})")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        if not images:
            raise DataError("no frames to write")
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return path
    iio = require_imageio()
    n = 0
    with iio.get_writer(str(path), fps=fps, codec="libx264", macro_block_size=1) as writer:
        for f in frames:
            writer.append_data(np.pad(f, ((0, f.shape[0] % 2), (0, f.shape[1] % 2), (0, 0)), mode="edge"))
            n += 1
    if n == 0:
        path.unlink(missing_ok=True)
        raise DataError("no frames to write")
    return path


def attention_video(model: torch.nn.Module, input_path: str | os.PathLike, output_path: str | os.PathLike,
                    fps: float | None = None, threshold: float | None = None, image_size=None,
                    max_frames: int | None = None) -> Path:
    """Attention of every frame of ``input_path`` as an animation at ``output_path``.

    ``fps`` defaults to the input's frame rate (10 for a frame folder); ``image_size`` as in
    ``fit_to_patches`` (None: the first frame's size, which all frames then take).
    """
    if Path(output_path).suffix.lower() in VIDEO_SUFFIXES:
        require_imageio()  # fail before computing anything
    fps = fps or source_fps(input_path)
    frames = read_frames(input_path, max_frames)
    first = next(frames, None)
    if first is None:
        raise DataError(f"no frames in {input_path}")
    size = image_size or (first.height, first.width)
    out = (attention_frame(model, f, size, threshold) for f in itertools.chain([first], frames))
    return write_animation(out, output_path, fps)
