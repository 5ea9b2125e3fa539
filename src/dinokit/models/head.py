"""The DINO projection head: MLP -> bottleneck -> L2 norm -> weight-normalised linear to K logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DINOHead", "WeightNormLinear"]


class WeightNormLinear(nn.Module):
    """Bias-free linear layer ``W = g * v / ||v||`` (row norms), stored as ``weight_g [K, 1]`` and
    ``weight_v [K, d]`` exactly as ``torch.nn.utils.weight_norm`` names them in DINO checkpoints.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        bound = in_features ** -0.5  # nn.Linear's default uniform init
        nn.init.uniform_(self.weight_v, -bound, bound)

    @property
    def weight(self) -> torch.Tensor:
        """``[K, d]`` in the autocast dtype when autocast is on, else in the parameters' dtype."""
        dtype = self.weight_v.dtype
        if torch.is_autocast_enabled(self.weight_v.device.type):
            dtype = torch.get_autocast_dtype(self.weight_v.device.type)
        return _NormalizedWeight.apply(self.weight_v, self.weight_g, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class DINOHead(nn.Module):
    """Features ``[B, in_dim]`` to prototype logits ``[B, out_dim]``.

    With ``norm_last_layer`` the scale ``weight_g`` is frozen at 1, which the paper finds makes
    training more stable.
    """

    def __init__(self, in_dim: int, out_dim: int, use_bn: bool = False, norm_last_layer: bool = True,
                 nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            dims = [in_dim] + [hidden_dim] * (nlayers - 1)
            for a, b in zip(dims[:-1], dims[1:]):
                layers.append(nn.Linear(a, b))
                if use_bn:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


_ROWS = 4096  # rows per chunk: a [4096, 256] float32 slice (4 MB) stays in cache between passes


class _NormalizedWeight(torch.autograd.Function):
    """``W = g * v / ||v||`` (row norms), written out: with K = 65536 the autograd graph of the
    formula makes about ten passes over the 16.7 M-entry matrix per step; this makes three
    forward (norm, scale-and-cast into ``out_dtype``) and three backward, in cache-sized chunks."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, g: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        inv_norm = torch.linalg.vector_norm(v, dim=1, keepdim=True).reciprocal_()
        scale = g * inv_norm
        w = torch.empty(v.shape, dtype=out_dtype, device=v.device)
        torch.mul(v, scale, out=w)
        ctx.save_for_backward(v, g, inv_norm)
        return w

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor):
        v, g, inv_norm = ctx.saved_tensors
        grad_v = torch.empty_like(v)
        grad_g = torch.empty_like(g) if ctx.needs_input_grad[1] else None
        for start in range(0, v.shape[0], _ROWS):
            rows = slice(start, start + _ROWS)
            gw, vc, inv = grad_w[rows].to(v.dtype), v[rows], inv_norm[rows]
            dot = (gw * vc).sum(dim=1, keepdim=True)            # v . dL/dW, per row
            scale = g[rows] * inv
            # dL/dv = (g/n) dL/dW - (g/n^3) (v . dL/dW) v
            torch.mul(gw, scale, out=grad_v[rows]).addcmul_(vc, dot * scale * inv * inv, value=-1.0)
            if grad_g is not None:
                grad_g[rows] = dot * inv
        return grad_v, grad_g, None
