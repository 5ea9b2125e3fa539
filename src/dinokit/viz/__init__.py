"""Visualisation: attention maps and masks, attention videos, training curves, the run report."""

from .attention import (
    AttentionMaps,
    ImageResult,
    align_mask,
    colorize,
    compute_attention,
    fit_to_patches,
    last_attention,
    mask_overlay,
    overlay,
    save_attention_images,
    upsample,
    visualize_images,
)
from .masks import find_gt_mask, jaccard, kept_mass, load_gt_mask, mask_jaccards, threshold_mask
from .plots import plot_curves
from .report import load_run, write_report
from .video import attention_frame, attention_video, read_frames, write_animation

__all__ = [
    "AttentionMaps", "ImageResult", "align_mask", "attention_frame", "attention_video", "colorize",
    "compute_attention", "find_gt_mask", "fit_to_patches", "jaccard", "kept_mass", "last_attention",
    "load_gt_mask", "load_run", "mask_jaccards", "mask_overlay", "overlay", "plot_curves", "read_frames",
    "save_attention_images", "threshold_mask", "upsample", "visualize_images", "write_animation",
    "write_report",
]
