"""Run a backbone over a list of crops of several resolutions, then the head once."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MultiCropWrapper"]


class MultiCropWrapper(nn.Module):
    """``forward([crop_0 [B,3,H0,W0], crop_1, ...])`` -> head output ``[n_crops * B, out_dim]``.

    Consecutive crops of the same resolution are concatenated into one backbone call (the two
    globals together, all locals together); the head then runs once over every feature.
    Output rows follow the input order: crop 0's batch first.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        if hasattr(backbone, "fc"):
            backbone.fc = nn.Identity()
        if hasattr(backbone, "head"):
            backbone.head = nn.Identity()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor | list[torch.Tensor],
                return_features: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Head output ``[n_crops * B, out_dim]``; with ``return_features`` also the backbone
        features ``[n_crops * B, D]`` it was computed from (one call, so DDP sees one forward)."""
        features = self.forward_backbone(x)
        out = self.head(features)
        return (out, features) if return_features else out

    def forward_backbone(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Backbone features ``[n_crops * B, D]`` in input order."""
        crops = x if isinstance(x, (list, tuple)) else [x]
        if not crops:
            raise ValueError("MultiCropWrapper takes a tensor [B, 3, H, W] or a non-empty list of them")
        feats, start = [], 0
        for end in _resolution_runs(crops):
            out = self.backbone(torch.cat(crops[start:end]))
            feats.append(out[0] if isinstance(out, tuple) else out)
            start = end
        return torch.cat(feats) if len(feats) > 1 else feats[0]


def _resolution_runs(crops) -> list[int]:
    """End indices of runs of consecutive crops sharing one spatial size."""
    ends = []
    for i in range(1, len(crops) + 1):
        if i == len(crops) or crops[i].shape[-2:] != crops[i - 1].shape[-2:]:
            ends.append(i)
    return ends
