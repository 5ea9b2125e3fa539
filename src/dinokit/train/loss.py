"""The DINO loss: cross-entropy between the centred, sharpened teacher and the student, over all
pairs of (teacher global view, different student view)."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["DINOLoss", "teacher_temp_schedule"]


def teacher_temp_schedule(warmup_teacher_temp: float, teacher_temp: float, warmup_epochs: int,
                          nepochs: int) -> np.ndarray:
    """Per-epoch teacher temperature: linear warm-up, then constant."""
    warm = np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs)
    return np.concatenate((warm, np.ones(max(nepochs - warmup_epochs, 0)) * teacher_temp))


class DINOLoss(nn.Module):
    """``forward(student_output [ncrops*B, K], teacher_output [2*B, K], epoch) -> scalar``.

    Rows are grouped by crop (crop 0's batch first), as ``MultiCropWrapper`` returns them. The
    result equals the mean over pairs ``(i, v), v != i`` of ``mean_b H(P_t(global_i), P_s(view_v))``;
    it is computed by summing the teacher targets each student view must match, which takes one
    pass over the logits instead of one per pair. The center is updated after each call, averaged
    over all processes.
    """

    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float,
                 warmup_teacher_temp_epochs: int, nepochs: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs)

    def teacher_probs(self, teacher_output: torch.Tensor, temp: float) -> torch.Tensor:
        """Centred, sharpened teacher distribution ``[2*B, K]`` (float32, no gradient)."""
        return F.softmax((teacher_output.detach().float() - self.center) / temp, dim=-1)

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int,
                teacher_temp: float | None = None) -> torch.Tensor:
        temp = float(self.teacher_temp_schedule[epoch]) if teacher_temp is None else teacher_temp
        q = self.teacher_probs(teacher_output, temp)
        loss = self.cross_entropy(student_output, q)
        self.update_center(teacher_output)
        return loss

    def cross_entropy(self, student_output: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Mean pairwise cross-entropy for teacher probabilities ``q [2*B, K]``."""
        n_global = 2
        batch = q.shape[0] // n_global
        q0, q1 = q[:batch], q[batch:]
        logp = F.log_softmax(student_output.float() / self.student_temp, dim=-1)
        logp = logp.view(self.ncrops, batch, -1)
        # Global view 0 is matched to teacher view 1 and vice versa; locals to both teacher views.
        total = -(q1 * logp[0]).sum() - (q0 * logp[1]).sum()
        if self.ncrops > n_global:
            total = total - ((q0 + q1) * logp[n_global:].sum(0)).sum()
        n_terms = n_global * (self.ncrops - 1)
        return total / (batch * n_terms)

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """EMA of the batch mean of teacher logits, all-reduced across processes."""
        batch_center = teacher_output.detach().float().sum(dim=0, keepdim=True)
        count = torch.tensor([float(len(teacher_output))], device=batch_center.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            dist.all_reduce(count)
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
