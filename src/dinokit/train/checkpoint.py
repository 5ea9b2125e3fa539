"""Checkpoints that survive crashes: written to a temporary file, fsynced, then renamed over the
old one, so a reader only ever sees a complete file."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from ..errors import DinokitError
from ..models.pretrained import CheckpointError, load_checkpoint_file

__all__ = ["save_atomic", "load_for_resume", "CheckpointWriteError"]

log = logging.getLogger(__name__)


class CheckpointWriteError(DinokitError):
    """The checkpoint could not be written; the previous one is untouched."""


def save_atomic(obj: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` so that a crash at any moment leaves the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointWriteError(f"could not write {path}: {e.strerror or e}; the previous checkpoint "
                                   f"(if any) is intact") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
