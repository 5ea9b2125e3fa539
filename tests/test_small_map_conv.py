"""The small-map convolution trains exactly like nn.Conv2d: same outputs, same gradients."""

from __future__ import annotations

import pytest
import torch

from dinokit.models import resnet18_cifar
from dinokit.models import small_map_conv
from dinokit.models.small_map_conv import Conv2d, im2col_weight_grad
from dinokit.runtime import cpu_has_fast_bf16


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
    assert ours.uses_im2col(x)
    for a, b in zip(_grads(ours, x, False), _grads(ref, x, False)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_gives_fp32_weight_gradients_close_to_nn_conv2d():
    ours, ref = _twins(64, 64, 3, 1, 1)
    x = torch.randn(8, 64, 3, 3).contiguous(memory_format=torch.channels_last)
    (y, gx, gw), (y_ref, gx_ref, gw_ref) = _grads(ours, x, True), _grads(ref, x, True)
    assert gw.dtype == torch.float32 and gx.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gx, gx_ref, rtol=2e-2, atol=2e-2)
    gw_fp32 = _grads(_twins(64, 64, 3, 1, 1)[1], x, False)[2]
    torch.testing.assert_close(gw, gw_fp32, rtol=2e-2, atol=2e-2 * gw_fp32.abs().max().item())
    if cpu_has_fast_bf16():  # emulated, oneDNN's own bf16 gradient strays 3x further from fp32 (0.15 of 12.5)
        torch.testing.assert_close(gw, gw_ref, rtol=2e-2, atol=2e-2)


def test_large_maps_frozen_weights_and_inference_keep_the_stock_path():
    conv, _ = _twins(8, 8, 3, 1, 1)
    assert not conv.uses_im2col(torch.randn(2, 8, 12, 12))  # 144 positions
    assert conv.uses_im2col(torch.randn(2, 8, 6, 6))
    with torch.no_grad():
        assert not conv.uses_im2col(torch.randn(2, 8, 6, 6))
    conv.weight.requires_grad_(False)
    assert not conv.uses_im2col(torch.randn(2, 8, 6, 6))


def test_a_resnet_step_matches_the_stock_path(monkeypatch):
    """resnet18_cifar's gradients on 24 px crops, whose 6x6 and 3x3 maps take the im2col path."""
    torch.manual_seed(0)
    model, x = resnet18_cifar(), torch.randn(8, 3, 24, 24)
    calls = []
    monkeypatch.setattr(small_map_conv, "im2col_weight_grad",
                        lambda *a: calls.append(1) or im2col_weight_grad(*a))

    def grads():
        model.zero_grad()
        model(x).square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    ours = grads()
    assert len(calls) == 10  # the convolutions of layer3 and layer4
    monkeypatch.setattr(Conv2d, "small_map", 0)  # every convolution on nn.Conv2d's own path
    stock = grads()
    assert len(calls) == 10
    for (name, _), a, b in zip(model.named_parameters(), ours, stock):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
