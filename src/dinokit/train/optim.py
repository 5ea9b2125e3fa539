"""Optimiser set-up: parameter groups, AdamW / SGD / LARS, per-parameter gradient clipping."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["get_params_groups", "build_optimizer", "clip_gradients", "cancel_gradients_last_layer", "LARS"]


def get_params_groups(model: nn.Module) -> list[dict]:
    """Two groups: weights (decayed) and biases / norm parameters (never decayed)."""
    regularized, not_regularized = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (not_regularized if name.endswith(".bias") or p.ndim == 1 else regularized).append(p)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio, skipping biases and norms (1-d parameters)."""

    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, eta=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim != 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    p_norm, u_norm = torch.norm(p), torch.norm(dp)
                    trust = torch.where((p_norm > 0) & (u_norm > 0), g["eta"] * p_norm / u_norm,
                                        torch.ones_like(p_norm))
                    dp = dp.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"].mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def build_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    """Learning rate and weight decay start at 0: the schedules set them every iteration."""
    groups = get_params_groups(model)
    if name == "adamw":
        try:
            return torch.optim.AdamW(groups, lr=0.0, fused=True)
        except (RuntimeError, TypeError):  # fused kernels missing for this device / dtype
            return torch.optim.AdamW(groups, lr=0.0, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=0.9)
    if name == "lars":
        return LARS(groups)
    raise ValueError(f"unknown optimizer {name!r}")


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float) -> torch.Tensor:
    """Scale each parameter's gradient to norm at most ``clip`` (per tensor, as DINO does).

    Returns the gradient norms before clipping ``[n_params]``; no host synchronisation.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack(torch._foreach_norm(grads))
    coef = (clip / (norms + 1e-6)).clamp_(max=1.0)
    torch._foreach_mul_(grads, list(coef.unbind()))
    return norms


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """Drop the gradients of the head's last layer during the first ``freeze_last_layer`` epochs."""
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None
