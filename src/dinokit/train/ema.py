"""The teacher: an exponential moving average of the student's weights."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TeacherEMA"]


class TeacherEMA:
    """``teacher = m * teacher + (1 - m) * student`` over matching parameters, in two fused
    multi-tensor operations per step."""

    def __init__(self, student: nn.Module, teacher: nn.Module):
        s = dict(student.named_parameters())
        t = dict(teacher.named_parameters())
        names = [n for n in t if n in s]
        if len(names) != len(t):
            raise ValueError("student and teacher parameters do not match")
        self.student_params = [s[n] for n in names]
        self.teacher_params = [t[n] for n in names]

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        torch._foreach_lerp_(self.teacher_params, [p.detach() for p in self.student_params], 1.0 - momentum)
