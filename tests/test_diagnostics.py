"""Collapse diagnostics on synthetic teacher outputs: collapsed ones warn, healthy ones do not."""

from __future__ import annotations

import math

import pytest
import torch

from dinokit.train.diagnostics import (CollapseStats, center_norm, collapse_stats, collapse_warning,
                                       effective_rank, entropy, kl_teacher_student, mean_output_entropy,
                                       teacher_entropy)

K, B = 256, 64


def one_hot_logits(targets: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(targets, K).float() * scale


def stats_for(logits: torch.Tensor, temp: float = 0.04) -> dict:
    center = torch.zeros(1, K)
    return {"teacher_entropy": teacher_entropy(logits, center, temp),
            "batch_entropy": mean_output_entropy(logits, center, temp)}


def test_entropies_in_nats():
    uniform = torch.zeros(B, K)
    center = torch.zeros(1, K)
    assert teacher_entropy(uniform, center, 0.04) == pytest.approx(math.log(K))
    assert mean_output_entropy(uniform, center, 0.04) == pytest.approx(math.log(K))
    diverse = one_hot_logits(torch.arange(B) % K)
    assert teacher_entropy(diverse, center, 0.04) == pytest.approx(0.0, abs=1e-6)
    assert mean_output_entropy(diverse, center, 0.04) == pytest.approx(math.log(B), abs=1e-5)
    # centering: subtracting the (constant) one-hot center from constant one-hot logits flattens them
    same = one_hot_logits(torch.zeros(B, dtype=torch.long))
    assert teacher_entropy(same, same[:1], 0.04) == pytest.approx(math.log(K))
    assert entropy(torch.tensor([0.5, 0.5, 0.0])).item() == pytest.approx(math.log(2))


def test_one_dimension_dominating_warns():
    collapsed = one_hot_logits(torch.full((B,), 7))
    msg = collapse_warning(stats_for(collapsed), K)
    assert msg is not None and "one output dimension dominates" in msg


def test_uniform_output_warns():
    uniform = torch.randn(B, K) * 1e-4
    msg = collapse_warning(stats_for(uniform), K)
    assert msg is not None and "uniform" in msg


def test_healthy_outputs_do_not_warn():
    torch.manual_seed(0)
    sharp_diverse = one_hot_logits(torch.randint(0, K, (B,)), scale=0.3) + 0.01 * torch.randn(B, K)
    stats = stats_for(sharp_diverse)
    assert 0 < stats["teacher_entropy"] < 0.5 * math.log(K) and stats["batch_entropy"] > 0.5 * math.log(K)
    assert collapse_warning(stats, K) is None
    # sharp and all different but only a few prototypes used: still no warning (not the same one)
    assert collapse_warning(stats_for(one_hot_logits(torch.arange(B) % 8)), K) is None
    assert collapse_warning({}, K) is None  # nothing logged: nothing to say


def test_kl_center_norm():
    p = torch.softmax(torch.randn(8, K), -1)
    assert kl_teacher_student(p, p.log()) == pytest.approx(0.0, abs=1e-5)
    q = torch.full((8, K), 1.0 / K)
    expected = float((p * (p.log() - q.log())).sum(-1).mean())
    assert kl_teacher_student(p, q.log()) == pytest.approx(expected, rel=1e-5)
    assert kl_teacher_student(p, q.log()) > 0
    assert center_norm(torch.tensor([[3.0, 4.0]])) == pytest.approx(5.0)


def test_effective_rank_of_known_matrices():
    assert effective_rank(torch.eye(16)) == pytest.approx(16.0)
    rank1 = torch.randn(32, 1) @ torch.randn(1, 16)
    assert effective_rank(rank1) == pytest.approx(1.0, abs=1e-3)
    d = torch.zeros(10, 10)
    d[0, 0], d[1, 1] = 1.0, 1.0
    assert effective_rank(d) == pytest.approx(2.0)
    assert 1.0 < effective_rank(torch.randn(64, 16)) <= 16.0
    assert effective_rank(torch.zeros(4, 4)) == 0.0


def test_collapse_stats_dataclass():
    torch.manual_seed(0)
    teacher = torch.randn(2 * B, K)
    student = torch.randn(10 * B, K)  # 2 global + 8 local crops
    s = collapse_stats(teacher, student, torch.zeros(1, K), teacher_temp=0.04, features=torch.eye(8))
    assert isinstance(s, CollapseStats)
    d = s.to_dict()
    assert set(d) == {"teacher_entropy", "batch_entropy", "kl_teacher_student", "center_norm",
                      "effective_rank"}
    assert d["effective_rank"] == pytest.approx(8.0) and d["center_norm"] == 0.0
    assert d["kl_teacher_student"] > 0
    assert s.warning(K) == collapse_warning(d, K)
    same = collapse_stats(one_hot_logits(torch.zeros(B, dtype=torch.long)), torch.randn(B, K),
                          torch.zeros(1, K), 0.04)
    assert same.effective_rank is None and "dominates" in same.warning(K)
