"""Attention masks: keep the top share of attention mass, compare masks with ground truth (Jaccard)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError

__all__ = ["find_gt_mask", "jaccard", "kept_mass", "load_gt_mask", "mask_jaccards", "threshold_mask"]


def threshold_mask(attn: torch.Tensor | np.ndarray, threshold: float) -> torch.Tensor:
    """Per head, the smallest set of patches holding at least ``threshold`` of the attention mass.

    ``attn``: ``[heads, h*w]`` or ``[heads, h, w]`` (non-negative). Returns a bool tensor of the
    same shape. This is the rule of DINO's ``visualize_attention.py``: sort each head's values
    ascending, normalise their cumulative sum, keep the patches whose cumulative mass exceeds
    ``1 - threshold``.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    attn = torch.as_tensor(attn).float()
    shape = attn.shape
    flat = attn.reshape(shape[0], -1)
    val, idx = torch.sort(flat, dim=1)
    val = val / val.sum(dim=1, keepdim=True).clamp_min(1e-12)
    keep_sorted = torch.cumsum(val, dim=1) > (1 - threshold)
    keep = torch.empty_like(keep_sorted)
    keep.scatter_(1, idx, keep_sorted)  # back to patch order (the official argsort(idx) gather)
    return keep.reshape(shape)


def kept_mass(attn: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Share of each head's attention mass inside its mask: ``[heads, ...]`` x2 -> ``[heads]``."""
    attn = torch.as_tensor(attn).float().reshape(len(attn), -1)
    mask = torch.as_tensor(mask).bool().reshape(len(attn), -1)
    return (attn * mask).sum(1) / attn.sum(1).clamp_min(1e-12)


def jaccard(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """Intersection over union of two boolean masks of the same shape; 1.0 when both are empty."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape} vs ground truth {gt.shape}")
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def load_gt_mask(path: str | os.PathLike) -> Image.Image:
    """A ground-truth mask file as a binary ``L`` image (255 = foreground: any nonzero value).

    Palette PNGs are read by index (so VOC-style masks work); for RGB(A) masks any nonzero
    colour channel counts, the alpha channel is ignored.
    """
    try:
        with Image.open(path) as im:
            im.load()
            a = np.asarray(im)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read ground-truth mask {path}: {e}") from None
    if a.ndim == 3:
        a = a[..., :3].any(axis=-1) if a.shape[-1] >= 3 else a[..., 0]
    return Image.fromarray(np.where(a != 0, 255, 0).astype(np.uint8), "L")


def mask_jaccards(masks: np.ndarray, mean_mask: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Jaccard scores of a thresholded attention against a GT mask, all ``[H, W]`` bool.

    ``masks``: per-head masks ``[heads, H, W]``; ``mean_mask``: the mask of the head-averaged
    attention. Returns ``union`` (union over heads), ``best_head`` (the best single head, an
    oracle choice), ``best_head_index`` and ``mean`` (mask of the mean attention).
    """
    per_head = [jaccard(m, gt) for m in masks]
    best = int(np.argmax(per_head))
    return {"union": jaccard(np.any(masks, axis=0), gt), "best_head": per_head[best],
            "best_head_index": best, "mean": jaccard(mean_mask, gt)}


def find_gt_mask(gt_dir: Path, stem: str) -> Path | None:
    """``gt_dir/<stem>.png`` (or another image extension), or None."""
    for ext in (".png", ".PNG", ".bmp", ".gif", ".tif", ".tiff", ".jpg", ".jpeg"):
        if (gt_dir / (stem + ext)).is_file():
            return gt_dir / (stem + ext)
    return None
