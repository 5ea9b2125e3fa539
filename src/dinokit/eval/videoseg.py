"""Semi-supervised video object segmentation by label propagation (DINO on DAVIS-2017).

The first frame's mask is given. Each following frame is segmented from its patch features
(last block, class token dropped, L2-normalised): every patch takes the ``topk`` most similar
patches among the first frame and the ``n_last_frames`` previous frames, restricted to a
``(2r + 1) x (2r + 1)`` window around its own position (``r = size_mask_neighborhood``), and
averages their soft labels with weights ``exp(sim / 0.1)``. Labels live on the patch grid (the
first mask one-hot and nearest-downsampled); the output is upsampled bilinearly, min-max
normalised per label, argmaxed and resized to the frame's size, then saved as a palette PNG with
the first mask's palette.

DAVIS layout: ``<root>/JPEGImages/480p/<seq>/00000.jpg ...`` and
``<root>/Annotations/480p/<seq>/00000.png``; the list of sequences comes from
``ImageSets/2017/val.txt`` when present. Frames are resized so that their shorter side is
``frame_size`` (480) and the longer one is a multiple of 64, as in the release.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data import IMG_EXTENSIONS, load_rgb, normalize, pil_to_uint8
from ..errors import ConfigError, DataError
from .davis_metrics import VOID, evaluate_sequence
from .features import model_device
from ..runtime import autocast, resolve_precision

__all__ = ["PropagationConfig", "working_size", "neighbourhood_mask", "propagate_labels", "labels_to_mask",
           "read_mask", "write_indexed_png", "segment_video", "list_sequences", "evaluate_davis"]

log = logging.getLogger(__name__)


@dataclass
class PropagationConfig:
    """The release's settings: 7 previous frames, top-5 neighbours, a 12-patch window, T = 0.1."""

    n_last_frames: int = 7
    size_mask_neighborhood: int = 12
    topk: int = 5
    temperature: float = 0.1
    frame_size: int = 480
    batch_size: int = 6  # frames per forward pass (the release's --bs)

    def __post_init__(self):
        if (self.n_last_frames < 0 or self.topk < 1 or self.size_mask_neighborhood < 0 or self.frame_size < 1
                or self.batch_size < 1):
            raise ConfigError("n_last_frames and size_mask_neighborhood must be >= 0, "
                              "topk, frame_size and batch_size >= 1")


def working_size(height: int, width: int, frame_size: int, patch: int) -> tuple[int, int]:
    """``(H, W)`` the network sees: shorter side ``frame_size`` (rounded down to the patch size),
    longer side scaled and rounded down to a multiple of 64 (of the patch size below 64 pixels)."""
    short = max(patch, frame_size // patch * patch)
    long_side = short * max(height, width) / min(height, width)
    step = 64 if long_side >= 64 and 64 % patch == 0 else patch
    long_side = max(short, int(long_side // step * step))
    return (long_side, short) if height > width else (short, long_side)


def neighbourhood_mask(h: int, w: int, radius: int, device=None) -> torch.Tensor:
    """Boolean ``[h*w, h*w]``: patch ``i`` may take labels from patch ``j`` (Chebyshev distance <= radius)."""
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    y, x = y.reshape(-1), x.reshape(-1)
    return ((y[:, None] - y[None, :]).abs() <= radius) & ((x[:, None] - x[None, :]).abs() <= radius)


def propagate_labels(target: torch.Tensor, sources: torch.Tensor, source_labels: torch.Tensor,
                     allowed: torch.Tensor | None, topk: int = 5, temperature: float = 0.1,
                     chunk: int = 1024) -> torch.Tensor:
    """Soft labels ``[C, N]`` of the ``N`` target patches.

    ``target [N, D]`` and ``sources [S, N, D]`` are L2-normalised patch features,
    ``source_labels [S, C, N]`` the labels of the source patches, ``allowed [N, N]`` (or None)
    which source positions each target position may use. Each target patch averages the labels
    of its ``topk`` most similar allowed source patches (over all ``S`` frames), weighted by
    ``exp(sim / temperature)``.
    """
    S, N, _ = sources.shape
    C = source_labels.shape[1]
    flat_labels = source_labels.permute(1, 0, 2).reshape(C, S * N)
    out = torch.empty(C, N, device=target.device)
    for i in range(0, N, chunk):
        sims = torch.einsum("nd,smd->nsm", target[i:i + chunk], sources)
        if allowed is not None:
            sims = sims.masked_fill(~allowed[i:i + chunk, None, :], float("-inf"))
        vals, idx = sims.reshape(len(sims), S * N).topk(min(topk, S * N), dim=1)
        weights = ((vals - vals[:, :1]) / temperature).exp()   # shift by the row max: same ratios
        weights = weights / weights.sum(dim=1, keepdim=True)
        out[:, i:i + chunk] = (flat_labels[:, idx] * weights).sum(dim=2)
    return out


def labels_to_mask(soft: torch.Tensor, grid: tuple[int, int], patch: int, size: tuple[int, int]) -> np.ndarray:
    """Soft labels ``[C, h*w]`` to an id map ``uint8 [H, W]`` of the frame's original ``size``:
    bilinear upsampling by ``patch``, per-label min-max normalisation, argmax, nearest resize."""
    x = F.interpolate(soft.reshape(1, -1, *grid), scale_factor=patch, mode="bilinear", align_corners=False)[0]
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = (x - lo).amax(dim=(1, 2), keepdim=True)
    positive = x.amax(dim=(1, 2), keepdim=True) > 0
    x = torch.where(positive & (hi > 0), (x - lo) / hi.clamp_min(1e-12), x)
    ids = x.argmax(dim=0).to(torch.uint8).cpu().numpy()
    return np.asarray(Image.fromarray(ids).resize((size[1], size[0]), Image.NEAREST))


def read_mask(path: str | os.PathLike, palette: list[int] | None = None) -> tuple[np.ndarray, list[int] | None]:
    """``(ids uint8 [H, W], palette)`` of a mask: an indexed (palette) PNG as DAVIS ships, a grey or
    1-bit image of ids (a grey image of only 0 and 255 is a binary mask: 255 is object 1, not void),
    or an RGB image. An RGB mask's colours are looked up in ``palette``; without one, in DAVIS's
    colour map if it holds them all, else black is id 0 and the other colours take ids 1, 2, ...
    in sorted order and make the returned palette."""
    try:
        with Image.open(path) as im:
            if im.mode == "P":
                return np.array(im, dtype=np.uint8), im.getpalette()
            if im.mode in ("L", "1"):
                ids = np.array(im).astype(np.uint8)
                return (ids // 255 if np.isin(ids, (0, 255)).all() else ids), None
            rgb = np.array(im.convert("RGB"))
    except OSError as e:
        raise DataError(f"cannot read mask {path}: {e}") from None
    return _rgb_to_ids(rgb, palette, path)


def _rgb_to_ids(rgb: np.ndarray, palette: list[int] | None, path) -> tuple[np.ndarray, list[int]]:
    """``rgb [H, W, 3]`` to ids ``[H, W]`` by colour, with the palette used (see ``read_mask``)."""
    pixels = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    colours, inverse = np.unique(pixels, return_inverse=True)
    if palette is None:
        palette = _default_palette()
        if not set(colours.tolist()) <= set(_colour_ids(palette)):
            if len(colours) > 255:  # e.g. a JPEG-compressed or antialiased mask
                raise DataError(f"mask {path} has {len(colours)} colours: save masks as indexed (palette) PNGs")
            ordered = [0] + [c for c in colours.tolist() if c != 0]
            palette = [v for c in ordered for v in (c >> 16, c >> 8 & 255, c & 255)]
    ids = _colour_ids(palette)
    unknown = [c for c in colours.tolist() if c not in ids]
    if unknown:
        c = unknown[0]
        raise DataError(f"mask {path} has {len(unknown)} colours that the first mask lacks, e.g. "
                        f"({c >> 16}, {c >> 8 & 255}, {c & 255}): save masks as indexed (palette) PNGs")
    return np.array([ids[c] for c in colours.tolist()], dtype=np.uint8)[inverse].reshape(rgb.shape[:2]), palette


def _colour_ids(palette: list[int]) -> dict[int, int]:
    """24-bit colour -> its index in a flat ``[r, g, b, ...]`` palette (a colour listed twice keeps its first)."""
    ids: dict[int, int] = {}
    for i in range(min(len(palette), 768) // 3):
        r, g, b = palette[3 * i:3 * i + 3]
        ids.setdefault(r << 16 | g << 8 | b, i)
    return ids


def _default_palette() -> list[int]:
    """The PASCAL VOC / DAVIS colour map: id 1 red, 2 green, 3 yellow ..."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


def write_indexed_png(path: str | os.PathLike, ids: np.ndarray, palette: Sequence[int] | None) -> None:
    """Save an id map ``[H, W]`` as a palette PNG (DAVIS format)."""
    im = Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8), mode="P")
    im.putpalette(list(palette) if palette else _default_palette())
    im.save(path, format="PNG")


def _read_frame(path: Path, frame_size: int, patch: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalised frame ``[3, H', W']`` at the working size, and the original ``(H, W)``."""
    im = load_rgb(path)
    h, w = working_size(im.height, im.width, frame_size, patch)
    return normalize(pil_to_uint8(im.resize((w, h), Image.BILINEAR))), (im.height, im.width)


def _patch_size(model: nn.Module) -> int:
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None) or getattr(model, "patch_size", None)
    if not hasattr(model, "get_intermediate_layers") or not patch:
        raise ConfigError("video segmentation needs a ViT backbone (patch tokens)")
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)


@torch.no_grad()
def _patch_features(model: nn.Module, frames: torch.Tensor, precision: str) -> torch.Tensor:
    """L2-normalised last-block patch tokens ``[B, h*w, D]`` of frames ``[B, 3, H, W]``."""
    device = model_device(model)
    with autocast(device, precision):
        tokens = model.get_intermediate_layers(frames.to(device), 1)[0][:, 1:]
    return F.normalize(tokens.float(), dim=2)


def _frame_features(model: nn.Module, paths: Sequence[Path], config: PropagationConfig, patch: int,
                    precision: str) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
    """``(patch features [h*w, D], original (H, W))`` per frame, ``config.batch_size`` frames a pass."""
    for i in range(0, len(paths), config.batch_size):
        read = [_read_frame(p, config.frame_size, patch) for p in paths[i:i + config.batch_size]]
        shapes = {frame.shape for frame, _ in read}
        # Frames of one sequence share a size; a stray one is run on its own rather than refused.
        groups = [read] if len(shapes) == 1 else [[r] for r in read]
        for group in groups:
            feats = _patch_features(model, torch.stack([frame for frame, _ in group]), precision)
            yield from zip(feats, (size for _, size in group))


def segment_video(model: nn.Module, frames: Sequence[str | os.PathLike], first_mask: np.ndarray,
                  config: PropagationConfig | None = None, precision: str = "auto",
                  on_frame: Callable[[int, np.ndarray], None] | None = None) -> list[np.ndarray]:
    """Id maps ``uint8 [H, W]``, one per frame, propagated from ``first_mask`` (the first frame's).

    ``on_frame(t, mask)`` is called as each frame is done (for writing to disk on the way).
    """
    config = config or PropagationConfig()
    patch = _patch_size(model)
    precision = resolve_precision(precision, model_device(model))
    model.eval()
    frame0, size = _read_frame(Path(frames[0]), config.frame_size, patch)
    grid = (frame0.shape[1] // patch, frame0.shape[2] // patch)
    seed = np.where(first_mask == VOID, 0, first_mask)
    if seed.shape != size:
        raise DataError(f"first mask is {seed.shape[1]}x{seed.shape[0]} but the frame is {size[1]}x{size[0]}")
    small = np.asarray(Image.fromarray(seed.astype(np.uint8)).resize((grid[1], grid[0]), Image.NEAREST))
    device = model_device(model)
    labels0 = F.one_hot(torch.from_numpy(small.astype(np.int64)).reshape(-1), int(seed.max()) + 1).T.float().to(device)
    feats0 = _patch_features(model, frame0[None], precision)[0]
    allowed = (neighbourhood_mask(*grid, config.size_mask_neighborhood, device)
               if config.size_mask_neighborhood > 0 else None)
    queue: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=config.n_last_frames or None)
    masks = [first_mask.astype(np.uint8)]
    if on_frame:
        on_frame(0, masks[0])
    later = _frame_features(model, [Path(f) for f in frames[1:]], config, patch, precision)
    for t, (feats, size) in enumerate(later, start=1):
        if feats.shape[0] != feats0.shape[0]:
            raise DataError(f"frame {Path(frames[t]).name} has another size than the first frame")
        used = [(feats0, labels0)] + (list(queue) if config.n_last_frames else [])
        soft = propagate_labels(feats, torch.stack([f for f, _ in used]), torch.stack([lab for _, lab in used]),
                                allowed, config.topk, config.temperature)
        if config.n_last_frames:
            queue.append((feats, soft))
        masks.append(labels_to_mask(soft, grid, patch, size))
        if on_frame:
            on_frame(t, masks[-1])
    return masks


def _frames(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith("."))


def list_sequences(root: str | os.PathLike, resolution: str = "480p", video_list: str | None = None) -> list[str]:
    """Sequence names from ``video_list``, else ``ImageSets/2017/val.txt``, else every folder."""
    root = Path(root)
    frames_dir = root / "JPEGImages" / resolution
    if not frames_dir.is_dir():
        raise DataError(f"no DAVIS frames at {frames_dir} (expected <data_path>/JPEGImages/{resolution}/<sequence>/)")
    listing = Path(video_list) if video_list else root / "ImageSets" / "2017" / "val.txt"
    if listing.is_file():
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    elif video_list:
        raise DataError(f"video list {video_list} does not exist")
    else:
        names = sorted(p.name for p in frames_dir.iterdir() if p.is_dir())
    if not names:
        raise DataError(f"no sequences below {frames_dir}")
    missing = [n for n in names if not (frames_dir / n).is_dir()]
    if missing:  # checked before any sequence is segmented
        raise DataError(f"{len(missing)} sequences listed in {listing} have no frames folder below {frames_dir}: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return names


def evaluate_davis(model: nn.Module, root: str | os.PathLike, output_dir: str | os.PathLike,
                   config: PropagationConfig | None = None, sequences: Sequence[str] | None = None,
                   resolution: str = "480p", precision: str = "auto",
                   on_sequence: Callable[[str, dict], None] | None = None) -> dict:
    """Segment each sequence, write ``<output_dir>/<seq>/<frame>.png``, and score J and F.

    Returns ``{"sequences": {name: {"frames", "J", "F"}}, "J_mean", "F_mean", "JF_mean"}``; the
    means (over all objects of all sequences, in percent) are present only when every frame of
    every sequence has a ground-truth mask.
    """
    root, output_dir = Path(root), Path(output_dir)
    sequences = sequences or list_sequences(root, resolution)
    per_seq, all_j, all_f, complete = {}, [], [], True
    for name in sequences:
        frames = _frames(root / "JPEGImages" / resolution / name)
        if not frames:
            raise DataError(f"sequence {name}: no frames")
        ann_dir = root / "Annotations" / resolution / name
        first_mask, palette = read_mask(ann_dir / f"{frames[0].stem}.png")
        if not ((first_mask > 0) & (first_mask < 255)).any():  # nothing to propagate, nothing to score
            raise DataError(f"sequence {name}: the first mask {frames[0].stem}.png marks no object "
                            f"(ids 1-254; 0 is background, 255 void)")
        out = output_dir / name
        out.mkdir(parents=True, exist_ok=True)

        def save(t, mask, out=out, frames=frames, palette=palette):
            write_indexed_png(out / f"{frames[t].stem}.png", mask, palette)

        preds = segment_video(model, frames, first_mask, config, precision, on_frame=save)
        gt_paths = [ann_dir / f"{f.stem}.png" for f in frames]
        row: dict = {"frames": len(frames)}
        if all(p.is_file() for p in gt_paths):
            scores = evaluate_sequence([read_mask(p, palette)[0] for p in gt_paths], preds)
            row.update({"J": 100 * float(np.mean(scores["J"])), "F": 100 * float(np.mean(scores["F"]))})
            all_j += scores["J"]
            all_f += scores["F"]
        else:
            complete = False
        per_seq[name] = row
        if on_sequence:
            on_sequence(name, row)
    result: dict = {"sequences": per_seq}
    if complete and all_j:
        j, f = 100 * float(np.mean(all_j)), 100 * float(np.mean(all_f))
        result.update({"J_mean": j, "F_mean": f, "JF_mean": (j + f) / 2})
    return result
