"""Device and precision choices, including GPU layouts this machine can only pretend to have."""

from __future__ import annotations

import logging

import pytest
import torch

from dinokit import runtime
from dinokit.errors import ConfigError
from dinokit.runtime import resolve_device, resolve_precision


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


def test_each_torchrun_process_gets_its_local_gpu(one_gpu, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)


@pytest.mark.parametrize("device,local_rank", [("auto", 1), ("cuda:2", None)])
def test_a_process_without_a_gpu_is_told_what_to_change(one_gpu, device, local_rank):
    # two processes on a one-GPU node: a clear message instead of "CUDA error: invalid device ordinal"
    with pytest.raises(ConfigError, match=r"shows 1 CUDA device.*--nproc_per_node.*--device cpu"):
        resolve_device(device, local_rank=local_rank)


def test_precision_choices():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("auto", torch.device("cuda", 0), gpu_default="fp16") == "fp16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("fp8", cpu)


@pytest.mark.parametrize("native,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_takes_bf16_only_where_the_cpu_multiplies_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: native)
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_asking_for_emulated_bf16_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    runtime._warn_emulated_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="dinokit.runtime"):
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # slow, but the user asked for it
        resolve_precision("bf16", torch.device("cpu"))
    warnings = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == 1 and "--precision auto or fp32" in warnings[0]
    runtime._warn_emulated_bf16.cache_clear()
