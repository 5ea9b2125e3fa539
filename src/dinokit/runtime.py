"""Where the code runs: device, numeric precision and its autocast context, process settings."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import sys

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "resolve_device", "resolve_precision", "autocast", "cpu_has_fast_bf16", "tune_malloc",
           "usable_workers", "configure_logging"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... as a device.

    With ``"auto"`` on a GPU machine the GPU is ``local_rank`` (default: ``$LOCAL_RANK`` or 0), so
    that each process of a ``torchrun`` job gets its own."""
    if device is None or str(device) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank)
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"unknown device {device!r}: {e}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ConfigError(f"GPU {dev.index} requested but this machine shows {n} CUDA device(s): start at most "
                          f"{n} process(es) per node (torchrun --nproc_per_node), or pass --device cpu")
    return dev


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 / AMX), not by emulation."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device, gpu_default: str = "fp32") -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` (GPUs only).

    ``"auto"`` is bf16 on CPUs that multiply bf16 natively (fp32 on the others, where bf16 is
    emulated and slow) and ``gpu_default`` on GPUs: fp32 for evaluation, which reproduces the
    published numbers; training passes fp16 when ``--use_fp16`` is on, as the official code does.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cpu":
            return "bf16" if cpu_has_fast_bf16() else "fp32"
        return gpu_default
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        _warn_emulated_bf16()
    return precision


@functools.lru_cache(maxsize=None)  # once per process: evaluation and training both resolve the precision
def _warn_emulated_bf16() -> None:
    # measured on an AVX2-only AMD EPYC (Zen 3): 1024^2 matmuls at 0.0013 TFLOP/s in bf16, 0.17 in fp32
    log.warning("precision bf16: this CPU has no bf16 matrix units (AVX512-BF16 or AMX), so bf16 is emulated "
                "and matrix products run about 100x slower than in fp32; use --precision auto or fp32")


def autocast(device: torch.device, precision: str):
    """Autocast to bf16 or fp16; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def tune_malloc() -> bool:
    """Keep freed memory inside the process (glibc only).

    A training step allocates and frees the same large buffers every iteration; by default glibc
    returns them to the kernel (mmap / trim) and every step then pays page faults for them again,
    a fifth to a third of the augmentation time on CPU. Returns whether the settings took effect.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return bool(libc.mallopt(m_trim_threshold, 1 << 30) and libc.mallopt(m_top_pad, 256 << 20)
                and libc.mallopt(m_mmap_threshold, 64 << 20))


def usable_workers(asked: int) -> int:
    """``asked`` data-loading processes, but no more than the CPUs this process may use: the
    release's default of 10 on a 2-core machine only makes the workers compete (and torch warn)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if asked > cpus:
        _note_lowered(asked, cpus)
    return min(asked, cpus)


@functools.lru_cache(maxsize=None)
def _note_lowered(asked: int, cpus: int) -> None:  # once per process, not once per loader
    log.info("--num_workers %d lowered to %d, the CPUs this process may use", asked, cpus)


def configure_logging() -> None:
    """INFO lines with the time, for a process that runs dinokit (the CLI, a SLURM task)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
