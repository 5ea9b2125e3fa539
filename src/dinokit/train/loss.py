"""The DINO loss: cross-entropy between the centred, sharpened teacher and the student, over all
pairs of (teacher global view, different student view)."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["DINOLoss", "teacher_temp_schedule", "sinkhorn_knopp", "CENTERINGS"]

CENTERINGS = ("center", "sinkhorn_knopp")


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

    ``centering="sinkhorn_knopp"`` replaces ``softmax((t - center) / T)`` by DINOv2's balanced
    assignment of the batch to the K prototypes (``sinkhorn_knopp``): the center is then unused.
    """

    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float,
                 warmup_teacher_temp_epochs: int, nepochs: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9, centering: str = "center"):
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering {centering!r} is not one of {', '.join(CENTERINGS)}")
        self.centering = centering
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs)
        self.final_teacher_temp = teacher_temp

    def teacher_probs(self, teacher_output: torch.Tensor, temp: float) -> torch.Tensor:
        """Centred, sharpened teacher distribution ``[2*B, K]`` (float32, no gradient)."""
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_output.detach().float(), temp)
        return F.softmax((teacher_output.detach().float() - self.center) / temp, dim=-1)

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int,
                teacher_temp: float | None = None,
                return_targets: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The loss; with ``return_targets`` also the teacher targets ``[2*B, K]`` it used."""
        self._check_shapes(student_output, teacher_output)
        if teacher_temp is None:
            teacher_temp = self.scheduled_teacher_temp(epoch)
        q = self.teacher_probs(teacher_output, teacher_temp)
        loss = self.cross_entropy(student_output, q)
        self.update_center(teacher_output)
        return (loss, q) if return_targets else loss

    def scheduled_teacher_temp(self, epoch: float) -> float:
        """The schedule's temperature at ``epoch`` (a fraction counts as the epoch it is in; past the end,
        or for an empty schedule, the final temperature)."""
        schedule = self.teacher_temp_schedule
        if len(schedule) == 0:
            return self.final_teacher_temp
        return float(schedule[min(max(int(epoch), 0), len(schedule) - 1)])

    def _check_shapes(self, student_output: torch.Tensor, teacher_output: torch.Tensor) -> None:
        """Crops x batch rows that agree: a mismatch would otherwise pair the wrong rows silently."""
        k = self.center.shape[1]
        if student_output.dim() != 2 or teacher_output.dim() != 2 or {student_output.shape[1],
                                                                    teacher_output.shape[1]} != {k}:
            raise ValueError(f"DINOLoss(out_dim={k}) takes [crops*B, {k}] student and [2*B, {k}] teacher "
                             f"outputs, got {tuple(student_output.shape)} and {tuple(teacher_output.shape)}")
        if len(teacher_output) % 2 or len(student_output) != self.ncrops * len(teacher_output) // 2:
            raise ValueError(f"DINOLoss(ncrops={self.ncrops}) needs {self.ncrops} x B student rows for 2 x B "
                             f"teacher rows, got {len(student_output)} and {len(teacher_output)}")

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


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, n_iterations: int = 3) -> torch.Tensor:
    """Teacher targets ``[B, K]`` from logits ``[B, K]``: ``exp(logits / temp)`` scaled so that every
    row sums to 1 and every prototype (column) receives the same mass over the whole batch, all
    processes together (SwAV; DINOv2's teacher centering). Rows come out summing to 1."""
    q = (logits - logits.amax(dim=1, keepdim=True)).div_(temp).exp_()  # row shifts cancel out below
    distributed = dist.is_available() and dist.is_initialized()
    n_rows = torch.tensor([float(q.shape[0])], device=q.device)
    if distributed:
        dist.all_reduce(n_rows)
    for _ in range(n_iterations):
        cols = q.sum(dim=0, keepdim=True)
        if distributed:
            dist.all_reduce(cols)
        q.div_(cols.clamp_(min=1e-30) * q.shape[1])  # a prototype no sample reaches stays at 0
        q.div_(q.sum(dim=1, keepdim=True) * n_rows)
    return q.mul_(n_rows)


_CPU_ROWS = 8  # rows per chunk on a CPU: 8 x 65536 float32 (2 MB) stay in cache across the passes below
# On a GPU each chunk costs about ten kernel launches, so few large ones: CPU-sized chunks made a
# ViT-tiny step at batch 512 launch-bound on an H200 (15,000 launches per step, 2/3 from here).
_GPU_CHUNK_BYTES = 256 << 20


def _rows_per_chunk(q: torch.Tensor) -> int:
    """Rows of one view per chunk for teacher targets ``q [2*B, K]``: at least 1, at most ``B``."""
    rows = _CPU_ROWS if q.device.type == "cpu" else _GPU_CHUNK_BYTES // (4 * q.shape[1])
    return max(1, min(rows, q.shape[0] // 2))


def _chunks(q: torch.Tensor, ncrops: int, size: int):
    """``(student rows, teacher targets, target mass)`` in chunks of at most ``size`` rows.

    Global view 0 matches teacher view 1 and vice versa; local views match both (summed)."""
    batch = q.shape[0] // 2
    q0, q1 = q[:batch], q[batch:]
    both = q0 + q1 if ncrops > 2 else None
    for view in range(ncrops):
        target, mass = (q1, 1.0) if view == 0 else (q0, 1.0) if view == 1 else (both, 2.0)
        for start in range(0, batch, size):
            stop = min(start + size, batch)
            yield slice(view * batch + start, view * batch + stop), target[start:stop], mass


class _PairwiseCrossEntropy(torch.autograd.Function):
    """``-sum_v sum_b Q_v . log_softmax(s_v / T)`` normalised by ``B * n_pairs``.

    Written out because ``log_softmax`` + product + sum through autograd makes about ten passes
    over the ``[ncrops*B, K]`` logits (K = 65536) and keeps float32 copies of them alive. Here the
    logits are visited in cache-sized row chunks: the forward keeps only each row's
    log-normaliser, the backward recomputes the softmax chunk by chunk and writes the gradient in
    the logits' dtype.
    """

    @staticmethod
    def forward(ctx, student_output, q, ncrops, temp):
        lse = torch.empty(student_output.shape[0], device=q.device)
        total = torch.zeros((), device=q.device)
        size = _rows_per_chunk(q)
        buf = torch.empty(size, q.shape[1], device=q.device)
        for rows, target, mass in _chunks(q, ncrops, size):
            z = buf[:len(target)].copy_(student_output[rows]).mul_(1.0 / temp)
            row_lse = torch.logsumexp(z, dim=1)
            lse[rows] = row_lse
            total += mass * row_lse.sum() - (target * z).sum()
        ctx.save_for_backward(student_output, q, lse)
        ctx.ncrops, ctx.temp, ctx.size = ncrops, temp, size
        return total / (q.shape[0] * (ncrops - 1))

    @staticmethod
    def backward(ctx, grad_out):
        student_output, q, lse = ctx.saved_tensors
        factor = grad_out.float() / (q.shape[0] * (ctx.ncrops - 1) * ctx.temp)
        grad = torch.empty_like(student_output)
        buf = torch.empty(ctx.size, q.shape[1], device=q.device)
        for rows, target, mass in _chunks(q, ctx.ncrops, ctx.size):
            p = buf[:len(target)].copy_(student_output[rows]).mul_(1.0 / ctx.temp)
            p.sub_(lse[rows].unsqueeze(1)).exp_()
            torch.mul(p.mul_(mass).sub_(target), factor, out=grad[rows])
        return grad, None, None, None
