"""The KoLeo regulariser (Sablayrolles et al. 2019, used by DINOv2): spread the features of a
batch evenly over the sphere by pushing each one away from its nearest neighbour."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["koleo_loss"]


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``-mean_i log(min_{j != i} ||x_i - x_j||)`` over L2-normalised rows of ``features [B, D]``.

    The Kozachenko-Leonenko entropy estimator, up to constants: minimising it maximises the
    differential entropy of the features, which counters dimensional collapse."""
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        sims = x @ x.t()
        sims.fill_diagonal_(-2.0)  # below any cosine: never one's own neighbour
        nearest = sims.argmax(dim=1)
    distances = (x - x[nearest]).norm(dim=-1)
    return -torch.log(distances + eps).mean()
