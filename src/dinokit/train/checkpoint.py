"""Checkpoints that survive crashes: written to a temporary file, fsynced, then renamed over the
old one, so a reader only ever sees a complete file."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import DinokitError, first_line
from ..models.pretrained import CheckpointError, load_checkpoint_file

__all__ = ["save_atomic", "load_for_resume", "remove_stale_temporaries", "CheckpointWriteError"]

log = logging.getLogger(__name__)


class CheckpointWriteError(DinokitError):
    """The checkpoint could not be written; the previous one is untouched."""


def save_atomic(obj: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` so that a crash at any moment leaves the old file or the new one.

    A failed write (disk full, read-only folder, ...) removes its temporary file and raises
    ``CheckpointWriteError``; the file at ``path`` is then unchanged."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:  # torch.save reports a short write as a RuntimeError
        _unlink(tmp)
        raise CheckpointWriteError(f"could not write {path}: {_reason(e, path.parent)}; the previous "
                                   f"checkpoint (if any) is intact") from None
    except BaseException:
        _unlink(tmp)
        raise
    return path


def _unlink(tmp: str | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _reason(e: BaseException, folder: Path) -> str:
    for err in (e, e.__context__):  # torch.save wraps the OSError of a failed write
        if isinstance(err, OSError):
            return err.strerror or str(err)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return first_line(e)
    return f"{first_line(e)} ({free / 2**20:.0f} MiB free on that disk)"


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files that a process killed while writing (``kill -9``, power loss)
    left in ``folder``; returns how many. Only the process that writes there may call this."""
    n = 0
    for tmp in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            n += 1
    if n:
        log.info("removed %d temporary file(s) left in %s by an interrupted write", n, folder)
    return n


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_for_resume(output_dir: str | os.PathLike) -> dict | None:
    """The run's ``checkpoint.pth`` if there is one, else ``None``. A damaged file is an error,
    never silently replaced by a fresh start."""
    path = Path(output_dir) / "checkpoint.pth"
    if not path.exists():
        return None
    try:
        ckpt = load_checkpoint_file(path)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume: {e}. Move the file away to start afresh.") from None
    for key in ("student", "teacher", "optimizer", "epoch"):
        if key not in ckpt:
            raise CheckpointError(f"cannot resume from {path}: no {key!r} entry (is it a backbone-only file?)")
    return ckpt


# Flags that decide the shapes of the networks and of the optimizer state: a checkpoint only fits
# a run with the same values. A ViT's position embedding is built for --global_crops_size too.
SHAPE_FLAGS = ("arch", "patch_size", "out_dim", "use_bn_in_head", "norm_last_layer", "optimizer")
VIT_SHAPE_FLAGS = SHAPE_FLAGS + ("global_crops_size",)


def flag_changes(saved: dict | argparse.Namespace | None, current: dict) -> list[str]:
    """``--out_dim 1024 -> 2048`` for each shape-deciding flag that differs from the saved run's
    (``saved``: a dinokit checkpoint's dict or the release's Namespace of flags)."""
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    if not isinstance(saved, dict):
        return []
    flags = VIT_SHAPE_FLAGS if str(current.get("arch", "")).startswith("vit") else SHAPE_FLAGS
    return [f"--{k} {saved[k]} -> {current.get(k)}" for k in flags if k in saved and saved[k] != current.get(k)]
