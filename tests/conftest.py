"""Shared fixtures: the real CIFAR-10 JPEGs beside the repository, and small folders copied from them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR = Path(os.environ.get("DINOKIT_CIFAR10", REPO.parent / "shared" / "data" / "cifar10"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """``.../cifar10`` with ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``."""
    if not (CIFAR / "train").is_dir():
        pytest.skip(f"CIFAR-10 JPEGs not found at {CIFAR} (set DINOKIT_CIFAR10)")
    return CIFAR


def copy_subset(src: Path, dst: Path, per_class: int, classes: int = 10, offset: int = 0) -> Path:
    """Copy ``per_class`` images of the first ``classes`` classes of ``src`` into ``dst``."""
    for cls in sorted(p.name for p in src.iterdir() if p.is_dir())[:classes]:
        (dst / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / cls).iterdir())[offset:offset + per_class]:
            shutil.copy(f, dst / cls / f.name)
    return dst


@pytest.fixture(scope="session")
def cifar_small(tmp_path_factory, cifar_root) -> tuple[Path, Path]:
    """(train, test) folders: 30 train and 10 test images for each of the 10 classes."""
    base = tmp_path_factory.mktemp("cifar_small")
    return (copy_subset(cifar_root / "train", base / "train", 30),
            copy_subset(cifar_root / "test", base / "test", 10))
