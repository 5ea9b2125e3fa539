"""Self-attention maps of a ViT's class token, as in DINO's ``visualize_attention.py``.

Shapes: ``heads`` attention heads, ``h x w`` patch grid, ``H x W = (h*p) x (w*p)`` pixels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data import ImageDecodeError, load_rgb, normalize, pil_to_uint8
from ..errors import ConfigError, DataError
from .masks import find_gt_mask, load_gt_mask, mask_jaccards, threshold_mask

log = logging.getLogger(__name__)

__all__ = [
    "AttentionMaps",
    "ImageResult",
    "align_mask",
    "colorize",
    "compute_attention",
    "fit_to_patches",
    "head_colors",
    "last_attention",
    "mask_overlay",
    "overlay",
    "save_attention_images",
    "upsample",
    "visualize_images",
]


@dataclass
class AttentionMaps:
    """Attention of one image. ``masks``/``mean_mask`` are None without a threshold."""

    image: np.ndarray             # uint8 [H, W, 3], the image the network saw
    patch_attn: torch.Tensor      # [heads, h, w], class token -> patch attention
    attn: np.ndarray              # [heads, H, W], upsampled to the image
    masks: np.ndarray | None      # bool [heads, H, W], top-``threshold`` mass per head
    mean_mask: np.ndarray | None  # bool [H, W], same rule on the head-averaged attention
    threshold: float | None = None

    @property
    def mean(self) -> np.ndarray:
        """Head-averaged attention ``[H, W]``."""
        return self.attn.mean(axis=0)


def fit_to_patches(im: Image.Image, image_size: int | tuple[int, int] | None, patch_size: int,
                   resample: int = Image.BILINEAR) -> Image.Image:
    """Resize like the official script, then crop bottom/right to a multiple of ``patch_size``.

    ``image_size``: ``(H, W)`` resizes to exactly that; an int sets the shorter side; None or 0
    keeps the size.
    """
    if isinstance(image_size, (tuple, list)) and len(image_size) == 1:
        image_size = image_size[0]
    if isinstance(image_size, (tuple, list)):
        height, width = int(image_size[0]), int(image_size[1])
        im = im.resize((width, height), resample)
    elif image_size:
        s = int(image_size) / min(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), resample)
    w, h = im.width - im.width % patch_size, im.height - im.height % patch_size
    if w == 0 or h == 0:
        raise ConfigError(f"image of {im.width}x{im.height} pixels is smaller than one {patch_size}-pixel "
                          f"patch; raise --image_size")
    return im.crop((0, 0, w, h))


def align_mask(mask: Image.Image, image_size: tuple[int, int], fit_size, patch_size: int) -> np.ndarray:
    """A mask drawn on the original image (of ``image_size = (W, H)``) brought to the geometry of
    ``fit_to_patches(image, fit_size, patch_size)`` with nearest sampling: bool ``[H', W']``."""
    mask = mask.convert("L")
    if mask.size != tuple(image_size):
        mask = mask.resize(tuple(image_size), Image.NEAREST)
    return np.asarray(fit_to_patches(mask, fit_size, patch_size, Image.NEAREST)) > 0


@torch.inference_mode()
def last_attention(model: torch.nn.Module, image: torch.Tensor, max_full_tokens: int = 4097) -> torch.Tensor:
    """Class-token attention of every head of the last block: ``[3, H, W]`` -> ``[heads, h, w]``.

    ``image`` is normalised (optionally with a batch dim of 1); pixels beyond a multiple of the
    patch size are cropped. Each head's full row (class token included) sums to 1. Above
    ``max_full_tokens`` tokens only the class-token row is computed (the full N x N matrix of a
    480 px image in 4 px patches would take gigabytes).
    """
    if not hasattr(model, "get_last_selfattention"):
        raise ConfigError(f"attention maps need a vision transformer, not {type(model).__name__}")
    p = model.patch_size
    x = image if image.dim() == 4 else image.unsqueeze(0)
    x = x[..., : x.shape[-2] - x.shape[-2] % p, : x.shape[-1] - x.shape[-1] % p]
    x = x.to(next(model.parameters()).device).float()
    n_tokens = 1 + (x.shape[-2] // p) * (x.shape[-1] // p)
    if n_tokens > max_full_tokens and hasattr(model, "blocks") and hasattr(model, "prepare_tokens"):
        cls = _cls_attention(model, x)  # [1, heads, N]
    else:
        cls = model.get_last_selfattention(x)[:, :, 0]  # [1, heads, N, N] -> class-token row
    return cls[0, :, 1:].reshape(cls.shape[1], x.shape[-2] // p, x.shape[-1] // p).float().cpu()


def _cls_attention(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The class-token row of the last block's attention ``[B, heads, N]`` without the N x N matrix.

    Same numbers as ``get_last_selfattention(x)[:, :, 0]`` of dinokit's ViT; memory O(N).
    """
    tokens = model.prepare_tokens(x)
    for blk in model.blocks[:-1]:
        tokens = blk(tokens)
    blk = model.blocks[-1]
    y = blk.norm1(tokens)
    B, N, C = y.shape
    heads = blk.attn.num_heads
    q, k, _ = blk.attn.qkv(y).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    return ((q[:, :, :1] * blk.attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)[:, :, 0]


def upsample(maps: torch.Tensor | np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upsampling ``[heads, h, w]`` -> ``[heads, h*scale, w*scale]`` (dtype kept)."""
    t = torch.as_tensor(np.asarray(maps))
    out = F.interpolate(t.float().unsqueeze(0), scale_factor=scale, mode="nearest")[0]
    return out.bool().numpy() if t.dtype == torch.bool else out.numpy()


def colorize(values: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """``[H, W]`` floats, min-max scaled, to ``uint8 [H, W, 3]`` through a matplotlib colormap."""
    import matplotlib

    v = np.asarray(values, dtype=np.float64)
    span = v.max() - v.min()
    v = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    return (matplotlib.colormaps[cmap](v)[..., :3] * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, layer: np.ndarray, alpha: float = 0.5, where: np.ndarray | None = None
            ) -> np.ndarray:
    """Blend ``layer`` (``[H, W, 3]`` or one RGB colour) over ``image`` (uint8 ``[H, W, 3]``).

    With ``where`` (bool ``[H, W]``) only those pixels are blended.
    """
    img = image.astype(np.float32)
    mixed = (1 - alpha) * img + alpha * np.broadcast_to(np.asarray(layer, np.float32), img.shape)
    if where is not None:
        mixed = np.where(np.asarray(where, bool)[..., None], mixed, img)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    m = np.pad(mask, 1, constant_values=False)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def head_colors(n: int) -> np.ndarray:
    """``n`` distinct RGB colours ``uint8 [n, 3]`` (matplotlib's tab10, cycled)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return (np.array([cmap(i % 10)[:3] for i in range(n)]) * 255).astype(np.uint8)


def mask_overlay(image: np.ndarray, masks: np.ndarray, colors: np.ndarray | None = None,
                 alpha: float = 0.5) -> np.ndarray:
    """Masks ``bool [k, H, W]`` filled (``alpha``) and outlined in their colours over ``image``."""
    masks = np.asarray(masks, bool).reshape(-1, *image.shape[:2])
    colors = head_colors(len(masks)) if colors is None else colors
    out = image
    for m, c in zip(masks, colors):
        out = overlay(out, c, alpha, where=m)
        out = np.where(_boundary(m)[..., None], c, out).astype(np.uint8)
    return out


def compute_attention(model: torch.nn.Module, im: Image.Image, image_size=(480, 480),
                      threshold: float | None = None) -> AttentionMaps:
    """Resize/crop ``im`` (see ``fit_to_patches``), run the model, upsample, threshold."""
    p = model.patch_size
    im = fit_to_patches(im, image_size, p)
    pixels = pil_to_uint8(im)
    patch_attn = last_attention(model, normalize(pixels))
    masks = mean_mask = None
    if threshold is not None:
        masks = upsample(threshold_mask(patch_attn, threshold), p)
        mean_mask = upsample(threshold_mask(patch_attn.mean(0, keepdim=True), threshold), p)[0]
    return AttentionMaps(pixels.permute(1, 2, 0).numpy(), patch_attn, upsample(patch_attn, p), masks,
                         mean_mask, threshold)


def _save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def save_attention_images(maps: AttentionMaps, out_dir: str | os.PathLike, cmap: str = "viridis"
                          ) -> list[Path]:
    """Write the PNGs of one image into ``out_dir``; all have the image's size. Returns the paths.

    ``img.png`` (input as seen), ``attn-head{i}.png``, ``attn-mean.png``, ``attn-overlay.png``
    (mean attention over the image); with masks: ``mask-head{i}.png`` (white = kept),
    ``mask_th{threshold}_head{i}.png`` (the mask over the image, named as the release's
    visualize_attention.py names it), ``mask-mean.png`` and ``mask-overlay.png`` (all heads, one
    colour each).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [_save(maps.image, out / "img.png")]
    paths += [_save(colorize(a, cmap), out / f"attn-head{i}.png") for i, a in enumerate(maps.attn)]
    paths.append(_save(colorize(maps.mean, cmap), out / "attn-mean.png"))
    paths.append(_save(overlay(maps.image, colorize(maps.mean, "inferno"), 0.6), out / "attn-overlay.png"))
    if maps.masks is not None:
        colors = head_colors(len(maps.masks))
        for i, m in enumerate(maps.masks):
            paths.append(_save(m.astype(np.uint8) * 255, out / f"mask-head{i}.png"))
            paths.append(_save(mask_overlay(maps.image, m[None], colors[i:i + 1]),
                               out / f"mask_th{maps.threshold}_head{i}.png"))
        paths.append(_save(maps.mean_mask.astype(np.uint8) * 255, out / "mask-mean.png"))
        paths.append(_save(mask_overlay(maps.image, maps.masks, colors, alpha=0.35),
                           out / "mask-overlay.png"))
    return paths


@dataclass
class ImageResult:
    """Outputs of one image: its folder, the files written, Jaccard scores against its GT mask."""

    path: Path
    out_dir: Path
    files: list[Path]
    jaccard: dict[str, float] | None = None


def _out_name(path: Path, root: Path | None, used: set[str]) -> str:
    """``class/0001`` for ``root/class/0001.jpg``; the suffix is kept when the stem is taken."""
    rel = path.relative_to(root) if root is not None else Path(path.name)
    name = rel.with_suffix("").as_posix()
    if name in used:
        name = rel.as_posix().replace(".", "_")
    used.add(name)
    return name


def visualize_images(model: torch.nn.Module, paths: list[Path], output_dir: str | os.PathLike,
                     root: Path | None = None, image_size=(480, 480), threshold: float | None = None,
                     gt_dir: Path | None = None, cmap: str = "viridis") -> list[ImageResult]:
    """Attention PNGs of each image, optionally scored against ground-truth masks.

    One image writes into ``output_dir``; several (found below ``root``) into one sub-folder
    each, named after their path relative to ``root``. With ``gt_dir``, the GT mask of the same
    stem is scored (``mask_jaccards``) at ``threshold`` (0.6 if None, as in the paper).
    """
    if gt_dir is not None and threshold is None:
        threshold = 0.6
    results, used, failures = [], set(), []
    for path in paths:
        try:
            im = load_rgb(path)
        except ImageDecodeError as e:
            log.warning("skipping an image that cannot be decoded: %s", e)
            failures.append(e)
            continue
        out = Path(output_dir) if len(paths) == 1 else Path(output_dir) / _out_name(path, root, used)
        maps = compute_attention(model, im, image_size, threshold)
        result = ImageResult(path, out, save_attention_images(maps, out, cmap))
        gt_path = find_gt_mask(gt_dir, path.stem) if gt_dir is not None else None
        if gt_path is not None:
            gt = align_mask(load_gt_mask(gt_path), im.size, image_size, model.patch_size)
            result.jaccard = mask_jaccards(maps.masks, maps.mean_mask, gt)
        results.append(result)
    if not results:
        raise DataError(f"none of the {len(paths)} images could be decoded: {failures[0]}")
    return results
