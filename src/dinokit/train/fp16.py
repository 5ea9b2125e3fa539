"""fp16 training: the grad scaler skips every step whose gradients overflowed. A run where most
steps are skipped learns nothing while looking healthy, so the skipped steps are counted and a
majority of them is reported."""

from __future__ import annotations

import torch

__all__ = ["OverflowMonitor"]


class OverflowMonitor:
    """Counts the optimiser steps an fp16 ``GradScaler`` skipped in an epoch.

    A skipped step lowers the scale, which is how it is seen (as accelerate does): one host
    read per step, free where the loop already waits for the loss."""

    KEYS = ("fp16_skipped_steps", "loss_scale", "fp16_warning")  # what :meth:`stats` can return

    def __init__(self, scaler: torch.amp.GradScaler):
        self.scaler = scaler
        self.start_epoch()

    def start_epoch(self) -> None:
        self.last, self.skipped, self.steps = self.scaler.get_scale(), 0, 0

    def step_done(self) -> None:
        scale = self.scaler.get_scale()
        self.skipped += scale < self.last
        self.steps += 1
        self.last = scale

    def stats(self) -> dict:
        """``fp16_skipped_steps``, ``loss_scale`` and, when half the steps or more were skipped,
        ``fp16_warning``: what happened and what to do."""
        out = {"fp16_skipped_steps": self.skipped, "loss_scale": self.last}
        if self.steps and 2 * self.skipped >= self.steps:
            out["fp16_warning"] = (f"fp16 overflow: {self.skipped} of {self.steps} steps were skipped (loss scale "
                                   f"now {self.last:g}), so the weights barely changed; train with --precision "
                                   f"bf16 (GPUs from Ampere on) or fp32, or lower --lr")
        return out
