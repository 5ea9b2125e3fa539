"""J (region IoU) and F (boundary F-measure) of the DAVIS-2017 semi-supervised benchmark.

Same definitions as the official ``davis2017-evaluation`` code: masks hold object ids (0 is
background, 255 is void and ignored); the objects are those of the first annotated frame; the
first and last frames are left out; an object's score is its mean over the remaining frames; the
boundary tolerance is ``ceil(0.008 * image diagonal)`` pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["region_similarity", "boundary_f_measure", "evaluate_sequence"]

VOID = 255


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """IoU of two boolean masks ``[H, W]`` outside ``void`` (1 when both are empty)."""
    keep = np.ones_like(gt, dtype=bool) if void is None else ~void
    inter = np.logical_and(gt, pred)[keep].sum()
    union = np.logical_or(gt, pred)[keep].sum()
    return 1.0 if union == 0 else float(inter / union)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Boolean boundary pixels of a mask, as ``seg2bmap`` of the DAVIS code (same size)."""
    seg = mask.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disk of ``radius`` (``x² + y² <= r²``)."""
    if radius <= 0:
        return mask.astype(bool)
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius ** 2).float()[None, None]
    x = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.conv2d(x, disk, padding=radius)[0, 0] > 0.5).numpy()


def boundary_f_measure(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
                       bound_th: float = 0.008) -> float:
    """Boundary F-measure of two boolean masks ``[H, W]``: contour precision and recall within a
    tolerance of ``ceil(bound_th * diagonal)`` pixels (or ``bound_th`` pixels when >= 1)."""
    keep = np.ones_like(gt, dtype=bool) if void is None else ~void
    radius = int(bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*gt.shape)))
    pred_b, gt_b = _boundary(pred & keep), _boundary(gt & keep)
    n_pred, n_gt = pred_b.sum(), gt_b.sum()
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    precision = (pred_b & _dilate(gt_b, radius)).sum() / n_pred
    recall = (gt_b & _dilate(pred_b, radius)).sum() / n_gt
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def evaluate_sequence(gt_masks: Sequence[np.ndarray], pred_masks: Sequence[np.ndarray]) -> dict:
    """Per-object mean J and F of one sequence: ``{"J": [per object], "F": [per object]}``.

    ``gt_masks`` / ``pred_masks``: one ``[H, W]`` id map per frame. Frames 1 to T-2 are scored
    (all but the first when there are fewer than 3 frames).
    """
    if len(gt_masks) != len(pred_masks):
        raise ValueError(f"{len(gt_masks)} ground-truth masks for {len(pred_masks)} predictions")
    first = np.asarray(gt_masks[0])
    objects = range(1, int(first[first != VOID].max(initial=0)) + 1)
    frames = range(1, len(gt_masks) - 1) if len(gt_masks) >= 3 else range(1, len(gt_masks))
    js, fs = [], []
    for obj in objects:
        j, f = [], []
        for t in frames:
            gt, pred = np.asarray(gt_masks[t]), np.asarray(pred_masks[t])
            void = gt == VOID
            j.append(region_similarity(gt == obj, pred == obj, void))
            f.append(boundary_f_measure(gt == obj, pred == obj, void))
        js.append(float(np.mean(j)) if j else float("nan"))
        fs.append(float(np.mean(f)) if f else float("nan"))
    return {"J": js, "F": fs}
