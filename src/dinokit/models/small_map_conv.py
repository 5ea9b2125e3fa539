"""A ``nn.Conv2d`` whose weight gradient is one matrix product when its output map is small (CPU).

oneDNN sums a convolution's weight gradient over the output positions; on the 3x3 and 6x6 maps
of ``resnet18_cifar``'s last stages that took 4-6x the forward pass on an AMX CPU (bf16, 64
images, 256 channels at 3x3: 3.2 ms against 0.56 ms). Gathering the input windows (im2col) and
multiplying them once by the output gradient takes 0.8 ms. Larger maps keep oneDNN's kernel,
which wins there (``benchmarks/conv_grad.py`` measures both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Conv2d", "im2col_weight_grad"]


def im2col_weight_grad(grad_out: torch.Tensor, x: torch.Tensor, kernel: tuple[int, int],
                       stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """Weight gradient ``[C_out, C_in, kh, kw]`` of a convolution (no groups, no dilation).

    ``x [N, C_in, H, W]`` is the input, ``grad_out [N, C_out, Ho, Wo]`` the output's gradient; both
    are read channels-last, so the windows of ``x`` are ``[N*Ho*Wo, kh*kw*C_in]`` rows.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c_in = x.shape[:2]
    ho, wo = grad_out.shape[2:]
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))  # [N, H+2ph, W+2pw, C_in]
    windows = [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] for i in range(kh) for j in range(kw)]
    cols = torch.stack(windows, dim=3).reshape(n * ho * wo, kh * kw * c_in)
    g = grad_out.permute(0, 2, 3, 1).reshape(n * ho * wo, -1)
    return (g.t() @ cols).view(-1, kh, kw, c_in).permute(0, 3, 1, 2)


class _Im2colConv(torch.autograd.Function):
    """``F.conv2d`` forward; input gradient by oneDNN, weight gradient by ``im2col_weight_grad``."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, ctx.stride, ctx.padding, (1, 1), False, (0, 0), 1,
                (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            grad_w = im2col_weight_grad(grad_out, x, weight.shape[2:], ctx.stride, ctx.padding)
        return grad_x, grad_w, None, None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state dict) that trains faster on small maps on a CPU.

    When the output map has at most ``small_map`` positions, a CPU training step takes the weight
    gradient from ``im2col_weight_grad``; every other case is ``nn.Conv2d``'s own path.
    """

    small_map = 49  # positions: 7x7 and below gained 1.2-10x on AMX, 12x12 and up lost (benchmarks/conv_grad.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_im2col(x):
            return super().forward(x)
        weight = self.weight
        if torch.is_autocast_enabled("cpu"):  # cast here: autocast is off inside, so both match
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return _Im2colConv.apply(x, weight, self.stride, self.padding)

    def uses_im2col(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` takes the im2col weight gradient (the rule ``conv_grad.py`` prints)."""
        if (x.device.type != "cpu" or not torch.is_grad_enabled() or not self.weight.requires_grad
                or self.bias is not None or self.groups != 1 or self.dilation != (1, 1)
                or not isinstance(self.padding, tuple) or self.padding_mode != "zeros"):
            return False
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        ho = (x.shape[-2] + 2 * ph - kh) // sh + 1
        wo = (x.shape[-1] + 2 * pw - kw) // sw + 1
        return ho * wo <= self.small_map
