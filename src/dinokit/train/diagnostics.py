"""Collapse diagnostics of DINO training: numbers the trainer logs once per epoch on one batch.

DINO avoids collapse by balancing centering (pushes towards uniform outputs) against sharpening
(pushes towards one dimension). Two failure modes show in the teacher's output distribution
over ``K = out_dim`` prototypes:

* one dimension dominates: every sample is sharp (per-sample entropy ~ 0) *and* all samples pick
  the same prototype (entropy of the batch-averaged distribution ~ 0);
* uniform output: every sample's distribution is flat (per-sample entropy ~ log K).

Shapes: ``B`` samples, ``K`` output dimensions, ``D`` feature width. Entropies are in nats.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "CollapseStats",
    "center_norm",
    "collapse_stats",
    "collapse_warning",
    "effective_rank",
    "entropy",
    "kl_teacher_student",
    "mean_output_entropy",
    "teacher_entropy",
    "teacher_probs",
]


def teacher_probs(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """Centred, sharpened teacher distribution ``softmax((logits - center) / temp)``: ``[B, K]``."""
    return torch.softmax((teacher_logits.detach().float() - center.detach().float()) / temp, dim=-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of ``probs [..., K]`` -> ``[...]`` (``0 log 0 = 0``)."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)


def teacher_entropy(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> float:
    """Mean per-sample entropy of the centred, sharpened teacher softmax. ``[B, K], [1, K]``."""
    return float(entropy(teacher_probs(teacher_logits, center, temp)).mean())


def mean_output_entropy(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> float:
    """Entropy of the batch-averaged teacher distribution; near 0 when one dimension dominates."""
    return float(entropy(teacher_probs(teacher_logits, center, temp).mean(0)))


def kl_teacher_student(teacher_probs: torch.Tensor, student_log_probs: torch.Tensor) -> float:
    """Mean ``KL(teacher || student)`` over rows of ``[B, K]`` probabilities and ``[B, K]`` log-probs."""
    t = teacher_probs.detach().float()
    kl = (t * (torch.log(t.clamp_min(1e-30)) - student_log_probs.detach().float())).sum(-1)
    return float(kl.mean())


def center_norm(center: torch.Tensor) -> float:
    """L2 norm of the teacher center ``[1, K]``."""
    return float(center.detach().float().norm())


def effective_rank(features: torch.Tensor) -> float:
    """Effective rank of ``features [B, D]`` (Roy & Vetterli 2007): exp of the entropy of the
    singular values normalised to sum 1. Between 1 (rank one) and ``min(B, D)``."""
    s = torch.linalg.svdvals(features.detach().double())
    total = s.sum()
    if total <= 0:
        return 0.0
    return float(torch.exp(entropy(s / total)))


def collapse_warning(stats: dict, out_dim: int, low: float = 0.1, high: float = 0.95) -> str | None:
    """A plain-language warning when ``stats`` show collapse, else None.

    ``stats`` holds ``teacher_entropy`` and ``batch_entropy`` (nats; ``mean_output_entropy`` is
    accepted too). Collapse to one dimension: both below ``low * log(out_dim)``; uniform
    collapse: per-sample entropy above ``high * log(out_dim)``. Missing values give None.
    """
    h_max = math.log(out_dim)
    h_sample = stats.get("teacher_entropy")
    h_batch = stats.get("batch_entropy", stats.get("mean_output_entropy"))
    if h_sample is None or h_max <= 0:
        return None
    if h_sample > high * h_max:
        return (f"collapse warning: the teacher outputs are nearly uniform (entropy {h_sample:.2f} of at "
                f"most {h_max:.2f} nats) - centering dominates sharpening; lower the teacher "
                f"temperature (--teacher_temp / --warmup_teacher_temp) or check the learning rate")
    if h_batch is not None and h_sample < low * h_max and h_batch < low * h_max:
        return (f"collapse warning: one output dimension dominates - every sample picks the same "
                f"prototype (per-sample entropy {h_sample:.2f}, batch entropy {h_batch:.2f} of at most "
                f"{h_max:.2f} nats) - sharpening dominates centering; raise the teacher temperature, "
                f"check the center momentum, or lower the learning rate")
    return None


@dataclass
class CollapseStats:
    """Diagnostics of one batch; ``to_dict`` gives the keys the trainer writes to ``log.txt``."""

    teacher_entropy: float
    batch_entropy: float
    kl_teacher_student: float
    center_norm: float
    effective_rank: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def warning(self, out_dim: int) -> str | None:
        return collapse_warning(self.to_dict(), out_dim)


def collapse_stats(teacher_logits: torch.Tensor, student_logits: torch.Tensor, center: torch.Tensor,
                   teacher_temp: float, student_temp: float = 0.1,
                   features: torch.Tensor | None = None, probs: torch.Tensor | None = None) -> CollapseStats:
    """All diagnostics at once from raw head outputs.

    ``teacher_logits [B_t, K]`` (the global crops), ``student_logits [B_s, K]`` with ``B_s >= B_t``
    whose first ``B_t`` rows are the same global crops (the multi-crop layout), ``center [1, K]``,
    ``features [B, D]`` (backbone outputs) for the effective rank. ``probs [B_t, K]``: the teacher
    targets the loss used (default: the centred softmax; with Sinkhorn-Knopp they differ).
    """
    if probs is None:
        probs = teacher_probs(teacher_logits, center, teacher_temp)
    student_log_probs = torch.log_softmax(student_logits[: len(probs)].detach().float() / student_temp, -1)
    return CollapseStats(
        teacher_entropy=float(entropy(probs).mean()),
        batch_entropy=float(entropy(probs.mean(0))),
        kl_teacher_student=kl_teacher_student(probs, student_log_probs),
        center_norm=center_norm(center),
        effective_rank=None if features is None else effective_rank(features),
    )
