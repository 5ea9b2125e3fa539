"""Process groups from torchrun or SLURM environment variables; NCCL on GPUs, gloo on CPUs.

A process that dies or stops answering makes the collectives of the others fail (at once when its
connections close, after ``--dist_timeout_s`` when it hangs); :func:`peer_failures` turns those
errors into one :class:`PeerFailure` that says how to resume, instead of a traceback or a hang."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import DinokitError, first_line
from ..runtime import resolve_device

__all__ = ["DistInfo", "PeerFailure", "init_distributed", "launched", "cleanup", "is_main", "peer_failures"]

log = logging.getLogger(__name__)


class PeerFailure(DinokitError):
    """Another process of a distributed run died, or did not answer within the timeout."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = ""  # "torchrun" or "slurm": where rank and world size came from

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched(local_rank: int = 0) -> DistInfo:
    """The rank and world size a launcher (torchrun, torch.distributed.launch, srun) gave this
    process, read from the environment; a single process otherwise."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", local_rank)), "torchrun")
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return DistInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "slurm")
    return DistInfo()


def _from_env(local_rank: int = 0) -> DistInfo:
    """``launched()``; for SLURM also the torch variables (master address, rank) it derives."""
    info = launched(local_rank)
    if info.launcher == "slurm":
        env = os.environ
        env.setdefault("MASTER_ADDR", _slurm_master(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
        env.setdefault("MASTER_PORT", "29500")
        env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"] = (str(info.rank), str(info.world_size),
                                                            str(info.local_rank))
    return info


def _slurm_master(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return nodelist.split(",")[0]


def init_distributed(device: torch.device, timeout_s: int = 600, dist_url: str = "env://",
                     local_rank: int = 0) -> DistInfo:
    """Join the process group described by the environment; a single process otherwise.
    ``local_rank`` (the official ``--local_rank`` flag) stands in for a missing ``$LOCAL_RANK``."""
    info = _from_env(local_rank)
    if not info.enabled:
        return DistInfo()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(resolve_device(f"cuda:{info.local_rank}"))  # a clear error for a rank without a GPU
    # Without this line a missing peer (a SLURM batch script that forgot srun) looks like a silent hang.
    log.info("process %d/%d waiting for the others at %s:%s (%s, up to %d s)%s", info.rank, info.world_size,
             os.environ.get("MASTER_ADDR", "?"), os.environ.get("MASTER_PORT", "?"), backend, timeout_s,
             "; SLURM starts one process per task only through srun" if info.launcher == "slurm" else "")
    advice = f"not all {info.world_size} processes joined within {timeout_s} s"
    if info.launcher == "slurm":
        advice += f" (SLURM_NTASKS={info.world_size}: launch with srun, or set --ntasks to the processes you start)"
    with peer_failures(info, advice):
        dist.init_process_group(backend, init_method=dist_url, rank=info.rank, world_size=info.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    log.info("process %d/%d joined (%s)", info.rank, info.world_size, backend)
    return info


_COLLECTIVE_HINTS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "peer", "broken pipe")


def is_collective_failure(e: BaseException) -> bool:
    """Whether ``e`` is a failed collective or rendezvous rather than a bug in this process."""
    if isinstance(e, dist.DistError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(h in text for h in _COLLECTIVE_HINTS)


@contextlib.contextmanager
def peer_failures(info: DistInfo, advice: str):
    """Re-raise a failed collective of a distributed run as ``PeerFailure`` (message + ``advice``)."""
    try:
        yield
    except RuntimeError as e:
        if not info.enabled or not is_collective_failure(e):
            raise
        raise PeerFailure(f"process {info.rank} of {info.world_size}: a peer process failed or timed out "
                          f"({first_line(e)}); {advice}") from e


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
