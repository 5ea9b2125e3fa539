"""Soak: many epochs on a folder with 10% bad files, DataLoader workers, interrupted again and again
(SIGTERM, Ctrl-C, kill -9 at random moments and during checkpoint writes) and restarted with the
same command each time. It must end with a complete model and every bad file accounted for.

Run with ``pytest -m slow tests/test_soak.py`` (about 1 to 3 minutes on 2 CPU cores);
``DINOKIT_SOAK_SEED`` replays the interruption moments of a failed run."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from dinokit.models import load_pretrained
from dinokit.train.checkpoint import load_for_resume
from dinokit.viz.report import read_jsonl

from conftest import copy_subset
from test_robustness import (BAD, add_bad_files, add_odd_files, checkpoint_temporaries, finish, make_huge_jpeg,
                             metrics_lines, names, skipped_list, start_training, wait_for)

EPOCHS = 12
# 80 CIFAR JPEGs + 8 odd images + 10 bad files = 98 files, 7 batches of 14 per epoch.
SETTINGS = dict(cache="no", num_workers=2, batch_size_per_gpu=14, epochs=EPOCHS, saveckp_freq=4)
SUBPROCESS_KINDS = tuple(k for k in BAD if k != "unreadable.jpg")  # that one needs an in-process patch
INTERRUPTIONS = ("SIGTERM", "SIGKILL", "SIGINT", "SIGKILL_DURING_WRITE", "SIGTERM", "SIGKILL", "SIGINT",
                 "SIGKILL_DURING_WRITE")


@pytest.fixture(scope="module")
def soak_folder(tmp_path_factory, cifar_root) -> tuple[Path, list[Path]]:
    root = copy_subset(cifar_root / "train", tmp_path_factory.mktemp("soak"), 8)
    jpeg = next(iter(sorted((root / "cat").glob("*.jpg"))))
    bad = add_bad_files(root / "cat", jpeg, kinds=SUBPROCESS_KINDS)
    bad += add_bad_files(root / "dog", jpeg, tag="b_", kinds=("truncated.jpg", "corrupt.jpg", "empty.jpg",
                                                                "text.jpg"))
    add_odd_files(root / "ship", make_huge_jpeg(tmp_path_factory.mktemp("huge") / "huge.jpg"))
    return root, bad


def interrupt(kind: str, data: Path, out: Path, rng: random.Random) -> tuple[int | None, str]:
    """Start the training command, let it run a random number of steps, then interrupt it as ``kind``."""
    stale = set(checkpoint_temporaries(out))  # left by an earlier kill; removed when the run starts
    proc = start_training(data, out, **SETTINGS)
    if kind == "SIGKILL_DURING_WRITE":
        wait_for(lambda: set(checkpoint_temporaries(out)) - stale, proc, poll=0.0005, may_end=True)
    else:
        target = metrics_lines(out) + rng.randint(3, 16)
        wait_for(lambda: metrics_lines(out) >= target, proc, poll=0.01, may_end=True)
        time.sleep(rng.uniform(0.0, 0.3))
    if proc.poll() is None:
        if kind == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the workers get it too
        else:
            proc.send_signal(getattr(signal, kind.removesuffix("_DURING_WRITE")))
    return finish(proc, timeout=180)


@pytest.mark.slow
def test_soak_interrupted_training_on_bad_data_ends_complete(soak_folder, tmp_path):
    data, bad = soak_folder
    seed = int(os.environ.get("DINOKIT_SOAK_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    out = tmp_path / "run"
    t0 = time.monotonic()
    epochs_seen = []
    for kind in INTERRUPTIONS:
        rc, err = interrupt(kind, data, out, rng)
        context = f"seed {seed}, {kind}, rc {rc}: {err[-3000:]}"
        assert "Traceback" not in err, context
        if rc == 0:  # the signal came after the last step: the run is complete
            break
        expected = {"SIGTERM": [128 + signal.SIGTERM], "SIGINT": [128 + signal.SIGINT]}.get(kind, [-signal.SIGKILL])
        assert rc in expected, context
        if kind in ("SIGTERM", "SIGINT"):
            assert "Run the same command again to resume" in err, context
        if (out / "checkpoint.pth").exists():
            ckpt = load_for_resume(out)  # always a complete checkpoint, whatever the moment of the kill
            epochs_seen.append((ckpt["epoch"], ckpt["iter_in_epoch"]))
    assert epochs_seen == sorted(epochs_seen), f"seed {seed}: progress went backwards: {epochs_seen}"
    rc, err = finish(start_training(data, out, **SETTINGS), timeout=300)
    assert rc == 0 and "Traceback" not in err, f"seed {seed}: {err[-3000:]}"
    assert not epochs_seen or "resumed from" in err
    ckpt = load_for_resume(out)
    assert ckpt["epoch"] == EPOCHS and ckpt["iter_in_epoch"] == 0
    model = load_pretrained(out / "checkpoint.pth")
    assert model.patch_size == 8
    assert names(skipped_list(out)) == names(bad)  # every bad file, and only those
    assert not list(out.glob(".*.tmp"))
    records, unreadable_lines = read_jsonl(out / "metrics.jsonl")
    assert {r["epoch"] for r in records} == set(range(EPOCHS)) and unreadable_lines <= len(INTERRUPTIONS)
    print(f"soak: seed {seed}, {len(INTERRUPTIONS)} interruptions, checkpoints seen {epochs_seen}, "
          f"{time.monotonic() - t0:.0f} s")
