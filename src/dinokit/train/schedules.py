"""Per-iteration schedules: learning rate, weight decay, teacher momentum and temperature, crop size."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["cosine_scheduler", "cosine_at", "crop_size_at", "crop_scale_at", "Schedules"]


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0) -> np.ndarray:
    """``epochs * niter_per_ep`` values: linear warm-up from ``start_warmup_value`` to
    ``base_value`` over ``warmup_epochs``, then a half cosine down to ``final_value``."""
    if warmup_epochs > epochs:  # the release only asserts on the schedule's length
        raise ValueError(f"warmup_epochs {warmup_epochs} exceeds epochs {epochs}")
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def cosine_at(progress: float, base_value: float, final_value: float, warmup_fraction: float = 0.0,
              start_warmup_value: float = 0.0) -> float:
    """The same curve as a function of training progress in [0, 1] (used with a time budget)."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_fraction:
        return start_warmup_value + (base_value - start_warmup_value) * progress / warmup_fraction
    rest = (progress - warmup_fraction) / max(1.0 - warmup_fraction, 1e-12)
    return final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * rest))


def crop_size_at(progress: float, start: int, end: int, multiple: int = 8) -> int:
    """Progressive resizing: a size growing linearly from ``start`` to ``end`` over progress in
    [0, 1], rounded to a multiple of ``multiple`` and kept within ``[start, end]``."""
    size = multiple * round(_linear_at(progress, start, end) / multiple)
    return int(min(max(size, start), end))


def crop_scale_at(progress: float, start: float, end: tuple[float, float]) -> tuple[float, float]:
    """Crop curriculum: the area range ``(least, end[1])`` whose least area moves linearly from
    ``start`` to ``end[0]`` over progress in [0, 1] (easy, large crops first when start > end[0])."""
    return _linear_at(progress, start, end[0]), end[1]


def _linear_at(progress: float, start: float, end: float) -> float:
    """From ``start`` to ``end`` linearly over progress, which is clamped to [0, 1]."""
    return start + (end - start) * min(max(progress, 0.0), 1.0)


class Schedules:
    """All per-iteration values of a run: learning rate, weight decay, teacher momentum and
    temperature, whether the last layer is still frozen, with progressive resizing
    (``cfg.global_crops_size_start``) the size of the global crops, and with a crop curriculum
    (``cfg.global_crops_scale_start``) their area range.

    With ``budget_s`` the run is laid out on wall-clock progress ``elapsed / budget`` instead of
    iterations: warm-ups and decays keep their share of ``cfg.epochs`` (10 warm-up epochs of 100
    become the first 10% of the budget), so the whole schedule fits the time given.
    """

    def __init__(self, cfg, niter_per_ep: int, world_size: int = 1, budget_s: float | None = None):
        self.cfg, self.niter, self.budget_s = cfg, niter_per_ep, budget_s
        self.base_lr = cfg.lr * cfg.batch_size_per_gpu * world_size / 256.0
        if budget_s is None:
            e, n = cfg.epochs, niter_per_ep
            self.lr = cosine_scheduler(self.base_lr, cfg.min_lr, e, n, warmup_epochs=cfg.warmup_epochs)
            self.wd = cosine_scheduler(cfg.weight_decay, cfg.weight_decay_end, e, n)
            self.momentum = cosine_scheduler(cfg.momentum_teacher, cfg.momentum_teacher_end, e, n)
            warm = np.linspace(cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs)
            self.temp = np.concatenate((warm, np.full(max(e - cfg.warmup_teacher_temp_epochs, 0), cfg.teacher_temp)))

    @property
    def total_iters(self) -> int | None:
        return None if self.budget_s else self.cfg.epochs * self.niter

    def at(self, it: int, epoch: int, elapsed: float) -> dict[str, float]:
        values = self._budget_values(elapsed) if self.budget_s else \
            {"lr": float(self.lr[it]), "wd": float(self.wd[it]), "momentum": float(self.momentum[it]),
             "teacher_temp": float(self.temp[epoch]), "frozen_epoch": epoch}
        cfg = self.cfg
        progress = elapsed / self.budget_s if self.budget_s else it / max(self.total_iters - 1, 1)
        if cfg.global_crops_size_start:
            # ViTs need whole patches; ResNets run slower on sizes their strides do not divide
            multiple = cfg.patch_size if cfg.arch.startswith("vit") else 8
            values["global_size"] = crop_size_at(progress, cfg.global_crops_size_start, cfg.global_crops_size,
                                                 multiple)
        if cfg.global_crops_scale_start:
            values["global_scale"] = crop_scale_at(progress, cfg.global_crops_scale_start, cfg.global_crops_scale)
        return values

    def _budget_values(self, elapsed: float) -> dict[str, float]:
        cfg, p = self.cfg, min(elapsed / self.budget_s, 1.0)
        frac = 1.0 / max(cfg.epochs, 1)  # the share of the budget one nominal epoch stands for
        warm_t = cfg.warmup_teacher_temp_epochs * frac
        temp = cfg.teacher_temp if p >= warm_t else \
            cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * p / warm_t
        return {"lr": cosine_at(p, self.base_lr, cfg.min_lr, cfg.warmup_epochs * frac),
                "wd": cosine_at(p, cfg.weight_decay, cfg.weight_decay_end),
                "momentum": cosine_at(p, cfg.momentum_teacher, cfg.momentum_teacher_end), "teacher_temp": temp,
                "frozen_epoch": 0 if p < cfg.freeze_last_layer * frac else cfg.freeze_last_layer}

    def finished(self, epoch: int, elapsed: float) -> bool:
        return self.out_of_time(elapsed) if self.budget_s else epoch >= self.cfg.epochs

    def out_of_time(self, elapsed: float) -> bool:
        return self.budget_s is not None and elapsed >= self.budget_s

    def eta(self, it: int, niter: int, elapsed: float, steps_per_s: float) -> float:
        if self.budget_s:
            return max(self.budget_s - elapsed, 0.0)
        return (self.cfg.epochs * niter - it - 1) / max(steps_per_s, 1e-9)
