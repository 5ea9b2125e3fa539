"""Convolution weight gradients on CPU: oneDNN's kernel against one im2col matrix product.

For every convolution of a ResNet at a given crop size, times the weight gradient both ways
(channels-last, in bf16 or with ``--dtype fp32`` in fp32, as a training step runs them) and says
which path ``dinokit.models.small_map_conv`` takes.
Run: ``python benchmarks/conv_grad.py --arch resnet18_cifar --size 24 --batch 64``.
"""

from __future__ import annotations

import argparse
import time

import torch

from dinokit.models import resnet
from dinokit.models.small_map_conv import im2col_weight_grad


def _ms(fn, repeat: int = 20) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e3


def conv_inputs(arch: str, size: int, batch: int) -> list[tuple[torch.nn.Conv2d, tuple[int, ...]]]:
    """``(conv, input shape)`` for each distinct convolution of ``arch`` on ``size`` px images."""
    model = getattr(resnet, arch)()
    seen: dict[tuple, tuple[torch.nn.Conv2d, tuple[int, ...]]] = {}

    def record(module, inputs, _output):
        key = (tuple(inputs[0].shape), module.in_channels, module.out_channels, module.kernel_size, module.stride)
        seen.setdefault(key, (module, tuple(inputs[0].shape)))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(batch, 3, size, size))
    for h in hooks:
        h.remove()
    return list(seen.values())


def time_weight_grads(conv: torch.nn.Conv2d, shape: tuple[int, ...],
                      dtype: torch.dtype = torch.bfloat16) -> tuple[float, float, tuple[int, int], bool]:
    """``(oneDNN ms, im2col ms, output map, whether conv takes im2col)`` for inputs of ``shape``."""
    cl = torch.channels_last
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=cl)
    w = conv.weight.detach().to(dtype).contiguous(memory_format=cl)
    g = torch.nn.functional.conv2d(x, w, None, conv.stride, conv.padding)
    g = torch.randn_like(g).contiguous(memory_format=cl)
    onednn = _ms(lambda: torch.ops.aten.convolution_backward(
        g, x, w, None, conv.stride, conv.padding, (1, 1), False, (0, 0), 1, (False, True, False)))
    im2col = _ms(lambda: im2col_weight_grad(g, x, conv.kernel_size, conv.stride, conv.padding))
    return onednn, im2col, (g.shape[2], g.shape[3]), conv.uses_im2col(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18_cifar")
    parser.add_argument("--size", type=int, default=24)
    parser.add_argument("--batch", type=int, default=64, help="images in one forward (crops x batch)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                        help="fp32: as a CPU without bf16 units trains (--precision auto there)")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    print(f"{'input':>22} {'conv':>16} {'out map':>8} {'oneDNN ms':>10} {'im2col ms':>10}  path")
    total_onednn = total_chosen = 0.0
    for conv, shape in conv_inputs(args.arch, args.size, args.batch):
        onednn, im2col, (ho, wo), small = time_weight_grads(conv, shape, dtype)
        total_onednn += onednn
        total_chosen += im2col if small else onednn
        kind = f"{conv.in_channels}>{conv.out_channels} {conv.kernel_size[0]}x{conv.kernel_size[1]}/{conv.stride[0]}"
        print(f"{str(list(shape)):>22} {kind:>16} {ho}x{wo:<5} {onednn:10.2f} {im2col:10.2f}  "
              f"{'im2col' if small else 'oneDNN'}")
    print(f"sum over distinct convolutions: oneDNN {total_onednn:.1f} ms, as chosen {total_chosen:.1f} ms")


if __name__ == "__main__":
    main()
