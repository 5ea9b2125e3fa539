"""The small-map convolution trains exactly like nn.Conv2d: same outputs, same gradients."""

from __future__ import annotations

import pytest
import torch

from dinokit.models import resnet18_cifar
from dinokit.models.small_map_conv import Conv2d


def _twins(cin, cout, k, stride, padding):
    torch.manual_seed(0)
    ours = Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
    ref = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
    ref.load_state_dict(ours.state_dict())
    for m in (ours, ref):
        m.to(memory_format=torch.channels_last)
    return ours, ref


def _grads(conv, x, autocast):
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = conv(x)
    (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    return y.float(), x.grad, conv.weight.grad


@pytest.mark.parametrize("k, stride, padding, size", [(3, 1, 1, 3), (3, 1, 1, 6), (3, 2, 1, 6), (1, 2, 0, 6),
                                                      (3, 2, 1, 11)])
def test_gradients_equal_nn_conv2d_in_fp32(k, stride, padding, size):
    ours, ref = _twins(16, 24, k, stride, padding)
    x = torch.randn(4, 16, size, size).contiguous(memory_format=torch.channels_last)
    assert ours._im2col_pays(x)
    for a, b in zip(_grads(ours, x, False), _grads(ref, x, False)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_gives_fp32_weight_gradients_close_to_nn_conv2d():
    ours, ref = _twins(64, 64, 3, 1, 1)
    x = torch.randn(8, 64, 3, 3).contiguous(memory_format=torch.channels_last)
    (y, gx, gw), (y_ref, gx_ref, gw_ref) = _grads(ours, x, True), _grads(ref, x, True)
    assert gw.dtype == torch.float32 and gx.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw, gw_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gx, gx_ref, rtol=2e-2, atol=2e-2)


def test_large_maps_frozen_weights_and_inference_keep_the_stock_path():
    conv, _ = _twins(8, 8, 3, 1, 1)
    assert not conv._im2col_pays(torch.randn(2, 8, 12, 12))  # 144 positions
    assert conv._im2col_pays(torch.randn(2, 8, 6, 6))
    with torch.no_grad():
        assert not conv._im2col_pays(torch.randn(2, 8, 6, 6))
    conv.weight.requires_grad_(False)
    assert not conv._im2col_pays(torch.randn(2, 8, 6, 6))


def test_a_resnet_step_matches_one_built_of_nn_conv2d():
    """resnet18_cifar's weight gradients on 24 px crops (3x3 and 6x6 maps take the new path)."""
    torch.manual_seed(0)
    ours = resnet18_cifar()
    ref = resnet18_cifar()
    for m in list(ref.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, Conv2d):
                plain = torch.nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                        child.stride, child.padding, bias=False)
                setattr(m, child_name, plain)
    ref.load_state_dict(ours.state_dict())
    assert not any(isinstance(m, Conv2d) for m in ref.modules())
    x = torch.randn(8, 3, 24, 24)
    for model in (ours, ref):
        model(x).square().sum().backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4, msg=name)
