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
        return _PairwiseCrossEntropy.apply(student_output, q, self.ncrops, self.student_temp)

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


def _targets(q: torch.Tensor, view: int) -> tuple[torch.Tensor, float]:
    """The teacher targets student view ``view`` is trained on, summed, and their total mass:
    global view 0 matches teacher view 1 and vice versa; local views match both."""
    q0, q1 = q.chunk(2)
    if view == 0:
        return q1, 1.0
    if view == 1:
        return q0, 1.0
    return q0 + q1, 2.0


class _PairwiseCrossEntropy(torch.autograd.Function):
    """``-sum_v sum_b Q_v . log_softmax(s_v / T)`` normalised by ``B * n_pairs``, one view at a time.

    Written out because ``log_softmax`` + product + sum through autograd makes about ten passes
    over the ``[ncrops*B, K]`` logits (K = 65536) and keeps several copies alive; here the forward
    makes two passes per view and keeps only the per-row log-normaliser, the backward two more.
    """

    @staticmethod
    def forward(ctx, student_output, q, ncrops, temp):
        batch = q.shape[0] // 2
        scale = 1.0 / (batch * 2 * (ncrops - 1))
        views = student_output.view(ncrops, batch, -1)
        total = student_output.new_zeros((), dtype=torch.float32)
        lse = []
        for v in range(ncrops):
            z = views[v].float() / temp  # a new tensor even when the input is float32
            target, mass = _targets(q, v)
            row_lse = torch.logsumexp(z, dim=-1)
            total -= (target * z).sum() - mass * row_lse.sum()
            lse.append(row_lse)
        ctx.save_for_backward(student_output, q, torch.stack(lse))
        ctx.ncrops, ctx.temp, ctx.scale = ncrops, temp, scale
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        student_output, q, lse = ctx.saved_tensors
        ncrops, temp = ctx.ncrops, ctx.temp
        batch = q.shape[0] // 2
        views = student_output.view(ncrops, batch, -1)
        grad = torch.empty_like(student_output).view(ncrops, batch, -1)
        factor = grad_out.float() * ctx.scale / temp
        for v in range(ncrops):
            target, mass = _targets(q, v)
            p = (views[v].float() / temp).sub_(lse[v].unsqueeze(1)).exp_()
            grad[v] = p.mul_(mass).sub_(target).mul_(factor)
        return grad.view_as(student_output), None, None, None
