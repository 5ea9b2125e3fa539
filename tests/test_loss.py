"""The DINO loss and schedules give the numbers of their definitions in the paper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinokit.errors import ConfigError
from dinokit.train import DINOLoss, cosine_scheduler
from dinokit.train.config import TrainConfig
from dinokit.train.optim import cancel_gradients_last_layer, clip_gradients, get_params_groups
from dinokit.train.schedules import Schedules, cosine_at, crop_scale_at, crop_size_at


def pairwise_reference(student, teacher, center, ncrops, student_temp, teacher_temp):
    """Mean over pairs (i, v != i) of mean_b H(softmax((t_i - c)/tt), softmax(s_v/st))."""
    s = (student / student_temp).chunk(ncrops)
    t = F.softmax((teacher - center) / teacher_temp, dim=-1).chunk(2)
    terms = [torch.sum(-t[i] * F.log_softmax(s[v], dim=-1), dim=-1).mean()
             for i in range(2) for v in range(ncrops) if v != i]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("ncrops", [2, 4, 10])
def test_loss_equals_pairwise_definition_and_center_update(ncrops):
    torch.manual_seed(0)
    B, K = 6, 50
    loss_fn = DINOLoss(K, ncrops, 0.04, 0.07, 3, 10)
    loss_fn.center.normal_()
    center0 = loss_fn.center.clone()
    student = torch.randn(ncrops * B, K, requires_grad=True)
    teacher = torch.randn(2 * B, K)
    loss = loss_fn(student, teacher, epoch=1)
    ref = pairwise_reference(student, teacher, center0, ncrops, 0.1, float(np.linspace(0.04, 0.07, 3)[1]))
    torch.testing.assert_close(loss, ref)
    # Gradients agree too (the fused sum is not just equal in value).
    g, = torch.autograd.grad(loss, student)
    g_ref, = torch.autograd.grad(pairwise_reference(student, teacher, center0, ncrops, 0.1, 0.055), student)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(loss_fn.center, 0.9 * center0 + 0.1 * teacher.mean(0, keepdim=True))


def test_teacher_temperature_schedule():
    loss_fn = DINOLoss(8, 2, 0.04, 0.07, 30, 100)
    sched = loss_fn.teacher_temp_schedule
    assert len(sched) == 100 and sched[0] == pytest.approx(0.04) and sched[29] == pytest.approx(0.07)
    assert np.all(sched[30:] == 0.07)
    # A fractional epoch (epoch + it / niter) is the epoch it is in; before 0 the first value.
    assert loss_fn.scheduled_teacher_temp(9.99) == loss_fn.scheduled_teacher_temp(9) == pytest.approx(sched[9])
    assert loss_fn.scheduled_teacher_temp(-1) == pytest.approx(0.04)
    assert DINOLoss(8, 2, 0.04, 0.07, 0, 0).scheduled_teacher_temp(3) == 0.07  # empty schedule


@pytest.mark.parametrize("student_rows, teacher_rows, dim, match", [
    (30, 16, 64, "needs 4 x B student rows for 2 x B teacher rows, got 30 and 16"),
    (32, 15, 64, "got 32 and 15"),
    (32, 8, 64, "got 32 and 8"),  # 4 crops of 8 against 2 of 4: would pair the wrong rows
    (32, 16, 32, r"out_dim=64\) takes"),
])
def test_loss_rejects_outputs_that_do_not_pair_up(student_rows, teacher_rows, dim, match):
    loss = DINOLoss(64, 4, 0.04, 0.04, 0, 10)
    with pytest.raises(ValueError, match=match):
        loss(torch.randn(student_rows, dim), torch.randn(teacher_rows, 64), 0)


def test_epoch_past_the_schedule_uses_its_last_temperature():
    loss = DINOLoss(64, 4, 0.02, 0.07, 5, 10)
    s, t = torch.randn(32, 64), torch.randn(16, 64)
    expected = loss.teacher_probs(t, 0.07)
    torch.testing.assert_close(loss(s, t, 25, return_targets=True)[1], expected)
    assert not torch.allclose(expected, loss.teacher_probs(t, 0.02), atol=1e-3)  # the temperature matters


def test_cosine_scheduler_matches_closed_form():
    s = cosine_scheduler(1.0, 0.1, epochs=5, niter_per_ep=10, warmup_epochs=1, start_warmup_value=0.0)
    assert len(s) == 50
    np.testing.assert_allclose(s[:10], np.linspace(0, 1, 10))
    i = np.arange(40)
    np.testing.assert_allclose(s[10:], 0.1 + 0.45 * (1 + np.cos(np.pi * i / 40)))
    assert s[10] == pytest.approx(1.0) and s[-1] > 0.1
    with pytest.raises(ValueError, match="warmup_epochs 6 exceeds epochs 5"):
        cosine_scheduler(1.0, 0.1, epochs=5, niter_per_ep=10, warmup_epochs=6)
    assert cosine_at(0.0, 1.0, 0.1, 0.2) == 0.0 and cosine_at(0.2, 1.0, 0.1, 0.2) == pytest.approx(1.0)
    assert cosine_at(1.0, 1.0, 0.1, 0.2) == pytest.approx(0.1)


def test_teacher_momentum_ends_at_momentum_teacher_end_by_epochs_and_by_time():
    cfg = TrainConfig(epochs=20, momentum_teacher=0.99, momentum_teacher_end=0.999)
    by_epochs = Schedules(cfg, niter_per_ep=10)
    assert by_epochs.momentum[0] == pytest.approx(0.99) and by_epochs.momentum[-1] == pytest.approx(0.999, abs=1e-5)
    by_time = Schedules(cfg, niter_per_ep=10, budget_s=60.0)
    assert by_time.at(0, 0, 0.0)["momentum"] == pytest.approx(0.99)
    assert by_time.at(0, 0, 60.0)["momentum"] == pytest.approx(0.999)
    assert Schedules(TrainConfig(epochs=20), 10).momentum[-1] == pytest.approx(1.0, abs=1e-5)  # the paper's
    with pytest.raises(ConfigError, match="momentum_teacher_end"):
        TrainConfig(momentum_teacher=0.99, momentum_teacher_end=0.9).validate()


def test_progressive_resizing_grows_the_global_crops_by_epochs_and_by_time():
    assert [crop_size_at(p, 16, 32) for p in (0, 0.1, 0.2, 0.5, 0.9, 1.0, 2.0)] == [16, 16, 16, 24, 32, 32, 32]
    assert crop_size_at(0.5, 18, 30, multiple=4) == 24 and crop_size_at(0.0, 18, 30) == 18
    cfg = TrainConfig(arch="vit_tiny", patch_size=8, global_crops_size=32, global_crops_size_start=16, epochs=4,
                      warmup_epochs=1)
    by_epochs = Schedules(cfg, niter_per_ep=10)
    sizes = [by_epochs.at(it, it // 10, 0.0)["global_size"] for it in range(40)]
    assert sizes[0] == 16 and sizes[-1] == 32 and set(sizes) == {16, 24, 32} and sizes == sorted(sizes)
    by_time = Schedules(cfg, niter_per_ep=10, budget_s=100.0)
    assert [by_time.at(0, 0, t)["global_size"] for t in (0, 30, 60, 100)] == [16, 24, 24, 32]
    assert "global_size" not in Schedules(TrainConfig(epochs=20), 10).at(0, 0, 0.0)  # off by default
    with pytest.raises(ConfigError, match="global_crops_size_start"):
        TrainConfig(global_crops_size=32, global_crops_size_start=48).validate()


def test_crop_curriculum_moves_the_least_area_of_the_global_crops_by_epochs_and_by_time():
    ranges = [crop_scale_at(p, 0.5, (0.2, 1.0)) for p in (-1, 0, 0.5, 1, 2)]
    assert [lo for lo, _ in ranges] == pytest.approx([0.5, 0.5, 0.35, 0.2, 0.2]) and {hi for _, hi in ranges} == {1.0}
    cfg = TrainConfig(global_crops_scale=(0.2, 1.0), global_crops_scale_start=0.5, epochs=4, warmup_epochs=1)
    lows = [Schedules(cfg, niter_per_ep=10).at(it, it // 10, 0.0)["global_scale"][0] for it in range(40)]
    assert lows[0] == pytest.approx(0.5) and lows[-1] == pytest.approx(0.2) and lows == sorted(lows, reverse=True)
    by_time = Schedules(cfg, niter_per_ep=10, budget_s=100.0)
    assert [by_time.at(0, 0, t)["global_scale"][0] for t in (0, 50, 100)] == pytest.approx([0.5, 0.35, 0.2])
    assert "global_scale" not in Schedules(TrainConfig(epochs=20), 10).at(0, 0, 0.0)  # off by default
    with pytest.raises(ConfigError, match="global_crops_scale_start"):
        TrainConfig(global_crops_scale=(0.2, 0.8), global_crops_scale_start=0.9).validate()


def test_param_groups_clip_and_freeze():
    from dinokit.models import DINOHead
    head = DINOHead(16, 32, hidden_dim=8, bottleneck_dim=4, norm_last_layer=False)
    decay, no_decay = get_params_groups(head)
    assert all(p.ndim > 1 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    assert any(p is head.mlp[0].bias for p in no_decay["params"])
    assert any(p is head.last_layer.weight_g for p in decay["params"])  # [K, 1] is a weight
    head(torch.randn(4, 16)).pow(2).sum().mul(1e4).backward()
    before = [p.grad.norm().item() for p in head.parameters()]
    norms = clip_gradients(head, 3.0)
    after = [p.grad.norm().item() for p in head.parameters()]
    np.testing.assert_allclose(norms.numpy(), before, rtol=1e-5)
    for b, a in zip(before, after):
        assert a == pytest.approx(min(b, 3.0), rel=1e-4)
    cancel_gradients_last_layer(0, head, freeze_last_layer=1)
    assert head.last_layer.weight_v.grad is None and head.mlp[0].weight.grad is not None


@pytest.mark.parametrize("rows", [8, 1000], ids=["cpu_chunks", "gpu_chunks"])
def test_loss_on_bf16_logits_with_uneven_chunks(rows, monkeypatch):
    monkeypatch.setattr("dinokit.train.loss._CPU_ROWS", rows)  # 1000: one chunk per view, as on a GPU
    torch.manual_seed(1)
    B, K, ncrops = 13, 300, 6
    student = torch.randn(ncrops * B, K).to(torch.bfloat16).requires_grad_()
    teacher = torch.randn(2 * B, K)
    loss = DINOLoss(K, ncrops, 0.04, 0.04, 0, 1)(student, teacher, 0)
    ref = pairwise_reference(student.float(), teacher, torch.zeros(1, K), ncrops, 0.1, 0.04)
    torch.testing.assert_close(loss, ref)
    g, = torch.autograd.grad(loss, student)
    assert g.dtype == torch.bfloat16
    student32 = student.detach().float().requires_grad_()
    g_ref, = torch.autograd.grad(pairwise_reference(student32, teacher, torch.zeros(1, K), ncrops, 0.1, 0.04),
                                 student32)
    torch.testing.assert_close(g.float(), g_ref, rtol=2e-2, atol=1e-5)


def test_sinkhorn_knopp_balances_prototypes_and_ignores_row_shifts():
    from dinokit.train.loss import sinkhorn_knopp
    torch.manual_seed(2)
    logits = torch.randn(64, 16)
    logits[:, 3] += 2.0  # every sample prefers prototype 3: softmax targets would all agree
    q = sinkhorn_knopp(logits, temp=0.5, n_iterations=50)
    torch.testing.assert_close(q.sum(1), torch.ones(64))
    torch.testing.assert_close(q.sum(0), torch.full((16,), 64 / 16), rtol=1e-3, atol=1e-3)
    assert (q.argmax(1) == 3).float().mean() < 0.5 < (F.softmax(logits / 0.5, 1).argmax(1) == 3).float().mean()
    shifted = sinkhorn_knopp(logits + torch.randn(64, 1) * 10, temp=0.5, n_iterations=50)
    torch.testing.assert_close(shifted, q, rtol=1e-4, atol=1e-6)


def test_loss_with_sinkhorn_knopp_targets_matches_pairwise_definition():
    from dinokit.train.loss import sinkhorn_knopp
    torch.manual_seed(3)
    B, K, ncrops = 5, 40, 4
    student, teacher = torch.randn(ncrops * B, K), torch.randn(2 * B, K)
    loss = DINOLoss(K, ncrops, 0.04, 0.04, 0, 1, centering="sinkhorn_knopp")(student, teacher, 0)
    q = sinkhorn_knopp(teacher, 0.04).chunk(2)
    s = (student / 0.1).chunk(ncrops)
    terms = [torch.sum(-q[i] * F.log_softmax(s[v], -1), -1).mean() for i in range(2) for v in range(ncrops) if v != i]
    torch.testing.assert_close(loss, sum(terms) / len(terms))
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(K, ncrops, 0.04, 0.04, 0, 1, centering="mean")


def test_koleo_is_the_nearest_neighbour_log_distance_and_its_gradient_spreads_features():
    from dinokit.train.koleo import koleo_loss
    torch.manual_seed(4)
    x = torch.randn(12, 8)
    x[1] = x[0] + 0.01 * torch.randn(8)  # a near-duplicate pair
    n = F.normalize(x, dim=1)
    d = torch.cdist(n, n) + torch.eye(12) * 10
    torch.testing.assert_close(koleo_loss(x), -torch.log(d.min(1).values).mean(), rtol=1e-4, atol=1e-5)
    x = x.requires_grad_()
    for _ in range(20):
        g, = torch.autograd.grad(koleo_loss(x), x)
        x = (x - 0.1 * g).detach().requires_grad_()
    n2 = F.normalize(x.detach(), dim=1)
    d2 = torch.cdist(n2, n2) + torch.eye(12) * 10
    assert d2.min() > 5 * d.min()  # the duplicate pair was pushed apart


def test_returned_targets_are_the_ones_the_loss_used_before_the_center_moved():
    torch.manual_seed(5)
    B, K, ncrops = 4, 30, 3
    student, teacher = torch.randn(ncrops * B, K), torch.randn(2 * B, K)
    dino = DINOLoss(K, ncrops, 0.04, 0.04, 0, 1)
    dino.center.fill_(0.3)
    loss, q = dino(student, teacher, 0, return_targets=True)
    torch.testing.assert_close(q, F.softmax((teacher - 0.3) / 0.04, dim=-1))
    assert not torch.allclose(dino.center, torch.full((1, K), 0.3))  # updated after q was taken
    torch.testing.assert_close(loss, DINOLoss(K, ncrops, 0.04, 0.04, 0, 1).cross_entropy(student, q))
