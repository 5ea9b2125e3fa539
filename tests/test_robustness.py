"""Robust training on real files: bad images, signals, kill -9, failed checkpoint writes, a dead
peer process, malicious checkpoints and bad flags -- nothing is lost and every failure is one line."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from dinokit.cli.main import main
from dinokit.errors import DinokitError
from dinokit.models import build_backbone, load_pretrained
from dinokit.models.pretrained import CheckpointError
from dinokit.train import load_config
from dinokit.train import checkpoint as ckpt_mod
from dinokit.train import trainer as trainer_mod
from dinokit.train.batches import TrainBatches
from dinokit.train.checkpoint import CheckpointWriteError, load_for_resume
from dinokit.train.distributed import DistInfo, cleanup
from dinokit.train.trainer import Trainer, train

from conftest import copy_subset
from test_distributed import free_port
from test_train_loop import TINY, tiny_config

# Files that no decoder can use (-> skipped and listed) and odd files that must be converted.
BAD = ("truncated.jpg", "corrupt.jpg", "empty.jpg", "text.jpg", "unreadable.jpg", "fifo.jpg", "broken_link.jpg")
ODD = ("one_pixel.png", "huge.jpg", "sixteen_bit.png", "cmyk.jpg", "palette.png", "rgba.png", "gray.jpg",
       "wide.png")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    """The machine has 2 cores shared with other work: 1 thread per process is much faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- files
def make_huge_jpeg(path: Path, side: int = 12_000) -> Path:
    """A flat ``side x side`` RGB JPEG (about 2 MB on disk, 0.4 GB decoded): made in well under a second."""
    Image.new("RGB", (side, side), (90, 140, 200)).save(path, quality=80)
    return path


def error_lines(err: str) -> list[str]:
    """stderr without the progress bar's lines (a non-terminal stream gets them one per line)."""
    return [line for line in err.splitlines() if not line.startswith("[")]


def add_bad_files(folder: Path, real_jpeg: Path, tag: str = "", kinds=BAD) -> list[Path]:
    """Write one unusable file of each of ``kinds`` (names in ``BAD``) into ``folder``; returns their paths."""
    full = real_jpeg.read_bytes()
    writers = {
        "truncated.jpg": lambda p: p.write_bytes(full[: len(full) // 3]),
        "corrupt.jpg": lambda p: p.write_bytes(full[:4] + bytes(range(256)) * 4),
        "empty.jpg": lambda p: p.write_bytes(b""),
        "text.jpg": lambda p: p.write_text("this is not an image\n"),
        "unreadable.jpg": lambda p: p.write_bytes(full),  # a good JPEG that cannot be opened: see unreadable()
        "fifo.jpg": os.mkfifo,  # reading a FIFO blocks forever: it must be refused, not opened
        "broken_link.jpg": lambda p: p.symlink_to(folder / "no_such_file.jpg"),
    }
    paths = [folder / f"{tag}{name}" for name in kinds]
    for name, path in zip(kinds, paths):
        writers[name](path)
    (folder / f"{tag}folder.jpg").mkdir()  # a directory with an image name is not a file at all
    return paths


def add_odd_files(folder: Path, huge: Path, tag: str = "") -> list[Path]:
    """Write one of each kind of awkward but usable image into ``folder``; returns their paths."""
    p = {name: folder / f"{tag}{name}" for name in ODD}
    Image.new("RGB", (1, 1), (200, 10, 30)).save(p["one_pixel.png"])
    shutil.copy(huge, p["huge.jpg"])
    Image.fromarray((np.arange(20 * 24).reshape(20, 24) * 130).astype(np.uint16)).save(p["sixteen_bit.png"])
    Image.new("CMYK", (24, 16), (0, 255, 255, 0)).save(p["cmyk.jpg"])
    pal = Image.new("P", (10, 12), 1)
    pal.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
    pal.paste(0, (0, 0, 5, 12))
    pal.save(p["palette.png"], transparency=0)
    rgba = np.zeros((9, 7, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    rgba[:, :3, 3] = 0
    Image.fromarray(rgba, "RGBA").save(p["rgba.png"])
    Image.new("L", (30, 20), 77).save(p["gray.jpg"])
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8)).save(p["wide.png"])
    return list(p.values())


@pytest.fixture(scope="session")
def huge_jpeg(tmp_path_factory) -> Path:
    return make_huge_jpeg(tmp_path_factory.mktemp("huge") / "huge.jpg")


@pytest.fixture(scope="session")
def plain(tmp_path_factory, cifar_root) -> Path:
    """60 real CIFAR-10 JPEGs in 10 class folders."""
    return copy_subset(cifar_root / "train", tmp_path_factory.mktemp("plain"), 6)


@pytest.fixture(scope="session")
def mixed(tmp_path_factory, cifar_root, huge_jpeg) -> Path:
    """60 CIFAR JPEGs + 7 unusable + 8 odd files: 75 files, 68 usable (3 batches of 25)."""
    root = copy_subset(cifar_root / "train", tmp_path_factory.mktemp("mixed"), 6)
    odd = root / "airplane"
    add_bad_files(odd, next(iter(sorted(odd.glob("*.jpg")))))
    add_odd_files(odd, huge_jpeg)
    return root


@pytest.fixture
def unreadable(monkeypatch):
    """``unreadable.jpg`` raises PermissionError when opened, as a chmod 000 file does for a
    non-root user (root reads anything). Forked DataLoader workers inherit the patch."""
    real_open = Image.open

    def guarded(fp, *args, **kwargs):
        if isinstance(fp, (str, os.PathLike)) and Path(fp).name.endswith("unreadable.jpg"):
            raise PermissionError(errno.EACCES, "Permission denied", str(fp))
        return real_open(fp, *args, **kwargs)
    monkeypatch.setattr(Image, "open", guarded)


def skipped_list(out: Path) -> dict[str, str]:
    lines = (out / "skipped_files.txt").read_text().splitlines()
    assert all(line.count("\t") == 1 for line in lines)
    return dict(line.split("\t") for line in lines)


def names(paths) -> list[str]:
    return sorted(Path(p).name for p in paths)


# ------------------------------------------------------------------------------------- 1. bad images
@pytest.mark.parametrize("cache,workers", [("yes", 0), ("no", 0), ("no", 2)])
def test_every_usable_file_is_converted_and_every_bad_one_listed(mixed, unreadable, tmp_path, cache, workers):
    cfg = tiny_config(mixed, tmp_path, cache=cache, num_workers=workers, batch_size_per_gpu=1)
    data = TrainBatches(cfg, DistInfo(), torch.device("cpu"))
    n = 0
    for images, hw in data.epoch(0):
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.uint8 and (hw > 0).all()
        n += images.shape[0]
    bad = data.bad_files()
    assert n == 75 - len(BAD) and names(bad) == sorted(BAD)
    reasons = {Path(p).name: r for p, r in bad.items()}
    assert "not a regular file" in reasons["fifo.jpg"] and "Permission denied" in reasons["unreadable.jpg"]
    assert "FileNotFoundError" in reasons["broken_link.jpg"] and "truncated" in reasons["truncated.jpg"].lower()


@pytest.mark.parametrize("cache,workers", [("yes", 0), ("no", 0), ("no", 2)])
def test_training_skips_bad_files_and_lists_them_once(mixed, unreadable, tmp_path, caplog, cache, workers):
    cfg = tiny_config(mixed, tmp_path, cache=cache, num_workers=workers, batch_size_per_gpu=25, saveckp_freq=0)
    with caplog.at_level(logging.DEBUG, logger="dinokit"):
        assert train(cfg)["epochs"] == 2
    listed = skipped_list(tmp_path)
    assert names(listed) == sorted(BAD) and all(listed.values())
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "unusable" in r.getMessage()]
    # one line when the files are found (with their count and names), one summary at the end
    assert len(warned) == 2, warned
    assert warned[0].startswith(f"skipped {len(BAD)} unusable image file(s)")
    assert warned[1].startswith(f"{len(BAD)} unusable image file(s) were skipped in this run")
    assert all(name in line for name in BAD for line in warned)
    assert not any(name in line for name in ODD for line in warned)
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["epoch"] == 2


def test_empty_folder_is_one_line_from_the_cli(tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "dinokit", "train", "--data_path", str(tmp_path / "empty"),
                        "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert str(tmp_path / "empty") in r.stderr and "no images found" in r.stderr and "it holds no files" in r.stderr


@pytest.mark.parametrize("cache", ["yes", "no"])
def test_folder_without_a_usable_image_is_one_line(tmp_path, plain, capsys, unreadable, cache):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    for i in range(2):  # iPhone photos: the message counts them, so the user sees what to convert
        (tmp_path / "notes" / f"IMG_{i}.HEIC").write_bytes(b"ftypheic")
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    add_bad_files(only_bad, next(plain.glob("*/*.jpg")))
    for folder, message in ((tmp_path / "notes", "it holds 2 .heic, 1 .txt files: convert images to JPEG"),
                            (only_bad, "usable image")):
        rc = main(["train", *cli_flags(folder, tmp_path / "out", cache=cache, batch_size_per_gpu=2)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and str(folder) in err and message in err, err


# ------------------------------------------------------------------------------------- 2. signals
def cli_flags(data, out, **kw) -> list[str]:
    flags = []
    for k, v in {**TINY, "data_path": str(data), "output_dir": str(out), **kw}.items():
        flags += [f"--{k}", str(v).lower() if isinstance(v, bool) else str(v)]
    return flags


def start_training(data, out, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dinokit", "train", *cli_flags(data, out, **kw)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0, poll: float = 0.005,
             may_end: bool = False) -> None:
    """Poll ``condition`` while ``proc`` runs; its end is a failure unless ``may_end``."""
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            if may_end:
                return
            raise AssertionError(f"training ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(poll)


def metrics_lines(out: Path) -> int:
    try:
        return (out / "metrics.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def finish(proc: subprocess.Popen, timeout: float = 120.0) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_ctrl_c_to_the_process_group_checkpoints_mid_epoch_then_resumes(mixed, tmp_path):
    """SIGINT to the whole process group (a terminal's Ctrl-C), with 2 DataLoader workers."""
    kw = dict(cache="no", num_workers=2, batch_size_per_gpu=15, epochs=2, saveckp_freq=0)
    proc = start_training(mixed, tmp_path, **kw)
    wait_for(lambda: metrics_lines(tmp_path) >= 2, proc)
    os.killpg(proc.pid, signal.SIGINT)
    rc, err = finish(proc)
    assert rc == 128 + signal.SIGINT, err
    assert "stopped by SIGINT" in err and "Run the same command again to resume" in err and "Traceback" not in err
    ckpt = load_for_resume(tmp_path)
    assert ckpt["iter_in_epoch"] >= 1  # mid-epoch (5 iterations per epoch; the signal came after 2)
    rc, err = finish(start_training(mixed, tmp_path, **kw))
    assert rc == 0 and f"resumed from {tmp_path / 'checkpoint.pth'} at epoch {ckpt['epoch']}, iteration " \
        f"{ckpt['iter_in_epoch']}" in err, err
    assert load_for_resume(tmp_path)["epoch"] == 2


def test_sigterm_mid_epoch_then_resume_gives_the_uninterrupted_weights(plain, tmp_path):
    kw = dict(batch_size_per_gpu=10, epochs=2, saveckp_freq=0, cache="yes")
    train(tiny_config(plain, tmp_path / "full", **kw))
    reference = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)
    out = tmp_path / "part"
    proc = start_training(plain, out, **kw)
    wait_for(lambda: metrics_lines(out) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc)
    assert rc == 128 + signal.SIGTERM and "stopped by SIGTERM" in err and "resume" in err, err
    assert load_for_resume(out)["iter_in_epoch"] > 0  # mid-epoch: 6 iterations per epoch, signal after 2
    rc, err = finish(start_training(plain, out, **kw))
    assert rc == 0 and "resumed from" in err, err
    resumed = torch.load(out / "checkpoint.pth", weights_only=True)
    assert resumed["epoch"] == 2
    for key in reference["teacher"]:
        torch.testing.assert_close(resumed["teacher"][key], reference["teacher"][key], rtol=1e-4, atol=1e-5)


def checkpoint_temporaries(out: Path) -> list[Path]:
    return list(out.glob(".checkpoint*.tmp"))


def test_kill_9_at_any_moment_leaves_a_loadable_checkpoint(plain, tmp_path):
    kw = dict(epochs=3, saveckp_freq=1, cache="yes")
    rng = random.Random(0)
    # 1: kill while the second checkpoint is being written; 2: kill at a random moment
    proc = start_training(plain, tmp_path, **kw)
    wait_for(lambda: (tmp_path / "checkpoint.pth").exists() and checkpoint_temporaries(tmp_path), proc, poll=0.0005)
    proc.kill()
    proc.wait()
    assert load_for_resume(tmp_path)["epoch"] >= 1
    strays = checkpoint_temporaries(tmp_path)  # usually the half-written file of the kill
    proc = start_training(plain, tmp_path, **kw)
    wait_for(lambda: metrics_lines(tmp_path) >= 7, proc)
    assert not any(p.exists() for p in strays)  # removed when the run started
    time.sleep(rng.uniform(0.0, 1.0))
    proc.kill()
    proc.wait()
    assert load_for_resume(tmp_path)["epoch"] >= 1
    rc, err = finish(start_training(plain, tmp_path, **kw))
    assert rc == 0 and "resumed from" in err, err
    assert not list(tmp_path.glob(".*.tmp"))  # stray temporaries were removed
    assert load_for_resume(tmp_path)["epoch"] == 3 and load_pretrained(tmp_path / "checkpoint.pth").patch_size == 8


# ---------------------------------------------------------------------------- 3. failed checkpoint writes
def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_disk_full_during_a_periodic_save_keeps_the_previous_checkpoint(plain, tmp_path, monkeypatch, caplog):
    """The 2nd checkpoint goes to /dev/full (a real ENOSPC); training goes on and ends saved."""
    real_mkstemp = tempfile.mkstemp
    calls, checks = [], []

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        if kwargs.get("prefix") == ".checkpoint.pth.":
            calls.append(name)
            if len(calls) == 2:  # checkpoint.pth of epoch 2: every write fails with ENOSPC
                checks.append(digest(tmp_path / "checkpoint.pth"))
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
        return fd, name
    monkeypatch.setattr(ckpt_mod.tempfile, "mkstemp", mkstemp)
    real_save = trainer_mod.save_atomic

    def save_atomic(obj, path):
        try:
            return real_save(obj, path)
        except CheckpointWriteError:
            checks.append(digest(tmp_path / "checkpoint.pth"))
            checks.append(sorted(p.name for p in tmp_path.iterdir()))
            raise
    monkeypatch.setattr(trainer_mod, "save_atomic", save_atomic)
    with caplog.at_level(logging.ERROR, logger="dinokit.train"):
        assert train(tiny_config(plain, tmp_path, epochs=3, batch_size_per_gpu=20, cache="yes"))["epochs"] == 3
    before, after, files = checks
    assert before == after and not [f for f in files if f.endswith(".tmp")]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "previous checkpoint" in errors[0]
    assert names(tmp_path.glob("checkpoint*.pth")) == ["checkpoint.pth", "checkpoint0000.pth", "checkpoint0002.pth"]
    assert load_for_resume(tmp_path)["epoch"] == 3


def test_read_only_output_fails_the_run_when_the_final_checkpoint_is_not_written(plain, tmp_path, monkeypatch,
                                                                                  capsys):
    flags = cli_flags(plain, tmp_path, cache="yes", epochs=1, saveckp_freq=0)
    assert main(["train", *flags]) == 0
    kept = digest(tmp_path / "checkpoint.pth")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(ckpt_mod.tempfile, "mkstemp", read_only)
    capsys.readouterr()
    rc = main(["train", *cli_flags(plain, tmp_path, cache="yes", epochs=2, saveckp_freq=0)])
    err = capsys.readouterr().err
    assert rc == 2 and len(error_lines(err)) == 1 and "Traceback" not in err
    assert "training finished, but its checkpoint could not be written" in err and "Read-only file system" in err
    assert digest(tmp_path / "checkpoint.pth") == kept and load_for_resume(tmp_path)["epoch"] == 1
    with pytest.raises(CheckpointWriteError, match="Read-only"):
        train(tiny_config(plain, tmp_path, cache="yes", epochs=2, saveckp_freq=0))


def test_a_write_failure_without_a_message_is_still_reported_in_one_line(tmp_path, monkeypatch):
    ckpt_mod.save_atomic({"epoch": 1}, tmp_path / "checkpoint.pth")

    def silent_failure(obj, f):
        raise RuntimeError()  # torch.save can fail with an empty message
    monkeypatch.setattr(ckpt_mod.torch, "save", silent_failure)
    with pytest.raises(CheckpointWriteError, match=r"checkpoint.pth: RuntimeError \(\d+ MiB free on that disk\)"):
        ckpt_mod.save_atomic({"epoch": 2}, tmp_path / "checkpoint.pth")
    assert torch.load(tmp_path / "checkpoint.pth")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


# ----------------------------------------------------------------------------------- 4. divergence
def test_diverging_run_is_one_line_from_the_cli(plain, tmp_path, capsys):
    rc = main(["train", *cli_flags(plain, tmp_path, cache="yes", lr=1e30, warmup_epochs=0)])
    err = capsys.readouterr().err
    assert rc == 2 and len(error_lines(err)) == 1 and "Traceback" not in err
    assert "loss is not finite at epoch 0" in err and "--lr" in err and "--precision fp32" in err


# ----------------------------------------------------------------------------------- 5. a dead peer
def dist_worker(rank: int, world: int, port: int, data: str, out: str, die_at: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = load_config({**TINY, "device": "cpu", "data_path": data, "output_dir": out, "epochs": 2,
                       "batch_size_per_gpu": 10, "dist_timeout_s": 20, "saveckp_freq": 0})
    t0 = time.monotonic()
    try:
        trainer = Trainer(cfg)
        if rank == 1 and die_at:
            real_step = trainer.train_step

            def step(images, hw, it, *args):
                if it == die_at:
                    os._exit(1)  # no exception, no goodbye: as a crash or an OOM kill
                return real_step(images, hw, it, *args)
            trainer.train_step = step
        result = {"ok": True, "epochs": trainer.fit()["epochs"], "start_epoch": trainer.start_epoch}
    except DinokitError as e:
        result = {"ok": False, "type": type(e).__name__, "message": str(e)}
    finally:
        cleanup()
    result["seconds"] = time.monotonic() - t0
    Path(out, f"result{rank}.json").write_text(json.dumps(result))


def run_two_processes(data: Path, out: Path, die_at: int) -> list[int | None]:
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=dist_worker, args=(r, 2, port, str(data), str(out), die_at)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    return codes


def test_a_dead_rank_makes_the_other_exit_with_a_clear_error_then_restart_resumes(plain, tmp_path):
    # 60 images, 2 ranks x 10: 3 iterations per epoch; rank 1 dies in epoch 1, after the first checkpoint.
    codes = run_two_processes(plain, tmp_path, die_at=4)
    assert codes == [0, 1]
    r0 = json.loads((tmp_path / "result0.json").read_text())
    assert not r0["ok"] and r0["type"] == "PeerFailure" and r0["seconds"] < 60
    assert "a peer process failed or timed out" in r0["message"] and "torchrun" in r0["message"]
    assert "resumes from the last checkpoint" in r0["message"]
    assert load_for_resume(tmp_path)["epoch"] == 1
    assert run_two_processes(plain, tmp_path, die_at=0) == [0, 0]
    for rank in (0, 1):
        r = json.loads((tmp_path / f"result{rank}.json").read_text())
        assert r["ok"] and r["start_epoch"] == 1 and r["epochs"] == 2
    assert load_for_resume(tmp_path)["epoch"] == 2


def test_a_second_run_on_the_same_output_dir_stops_before_touching_it(plain, tmp_path):
    first = Trainer(tiny_config(plain, tmp_path, epochs=1))
    (tmp_path / ".checkpoint.pth.tmp").write_bytes(b"the first run is writing this")
    with pytest.raises(DinokitError, match=r"in use by another training run \(pid \d+ on .*\): wait"):
        Trainer(tiny_config(plain, tmp_path, epochs=1))
    assert (tmp_path / ".checkpoint.pth.tmp").exists()  # the second run cleaned up nothing
    with pytest.raises(DinokitError, match="larger than the 60 images"):  # a run that fails to start lets go
        Trainer(tiny_config(plain, tmp_path / "other", batch_size_per_gpu=100))
    Trainer(tiny_config(plain, tmp_path / "other", epochs=1)).release()
    assert first.fit()["epochs"] == 1  # fit lets go at the end
    assert train(tiny_config(plain, tmp_path, epochs=2))["epochs"] == 2


def test_a_slurm_task_started_without_srun_says_so_instead_of_hanging(monkeypatch, caplog):
    from dinokit.train.distributed import PeerFailure, init_distributed
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # records the value to restore: the SLURM path writes these
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")  # as in an sbatch script that runs python directly
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    t0 = time.monotonic()
    with caplog.at_level("INFO"), pytest.raises(PeerFailure, match="not all 2 processes joined within 2 s"
                                                 r" \(SLURM_NTASKS=2: launch with srun"):
        init_distributed(torch.device("cpu"), timeout_s=2)
    assert time.monotonic() - t0 < 30
    assert "process 0/2 waiting for the others at 127.0.0.1" in caplog.text and "srun" in caplog.text


def test_evaluation_under_a_launcher_runs_once_in_process_0(monkeypatch, tmp_path, capsys, caplog):
    torch.save(build_backbone("vit_tiny", 16).state_dict(), tmp_path / "w.pth")
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["info", str(tmp_path / "w.pth")]) == 0
    assert capsys.readouterr().out == ""  # process 1 leaves without doing the work
    monkeypatch.setenv("RANK", "0")
    with caplog.at_level("WARNING", logger="dinokit"):
        assert main(["info", str(tmp_path / "w.pth")]) == 0
    assert "vit_tiny/16" in capsys.readouterr().out and "runs in one process" in caplog.text
    assert "WORLD_SIZE" not in os.environ  # so what it runs (the demo's training) does not wait for peers


# ------------------------------------------------------------------------------- 6. untrusted files
class _Evil:
    marker: Path

    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_malicious_checkpoint_is_never_unpickled(plain, tmp_path, capsys):
    _Evil.marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"student": _Evil(), "epoch": 1}, out / "checkpoint.pth")
    rc = main(["train", *cli_flags(plain, out, cache="yes")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot resume: refused to load" in err
    assert main(["info", str(out / "checkpoint.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused to load" in err
    with pytest.raises(CheckpointError, match="refused to load"):
        load_pretrained(out / "checkpoint.pth")
    assert not _Evil.marker.exists()


def test_damaged_or_unsafe_evaluation_files_get_one_line(tmp_path, capsys):
    _Evil.marker = tmp_path / "pwned"
    good = tmp_path / "good.pt"
    torch.save({"features": torch.randn(4, 3), "labels": torch.tensor([0, 1, 0, 1])}, good)
    (tmp_path / "text.pt").write_bytes(b"features,labels\n1,2\n")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    torch.save({"features": _Evil()}, tmp_path / "evil.pt")
    expected = {"text.pt": "is not a file saved by torch.save", "cut.pt": "is not a readable torch.save file",
                "evil.pt": "refused to load"}
    for name, message in expected.items():
        for cmd in (["knn", "--load_features", str(tmp_path / name), str(good)],
                    ["linear", "--load_features", str(tmp_path / name), str(good), "--epochs", "1",
                     "--output_dir", str(tmp_path / "lin")]):
            assert main(cmd) == 2, (name, cmd[0])
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and message in err and name in err, err
    assert not _Evil.marker.exists()


# ---------------------------------------------------------------------------------- 7. bad flags
@pytest.mark.parametrize("extra,yaml_text,match", [
    (["--batch_size_per_gpu", "500"], None, "larger than the 60 images"),
    ([], "lerning_rate: 0.1\n", "unknown configuration key(s): lerning_rate"),
    ([], "seed: ten\n", "seed: 'ten' is not a valid int"),
    (["--global_crops_size", "36"], None, "--global_crops_size 36 is not a multiple of --patch_size 8"),
])
def test_bad_flags_are_one_line_before_any_work(plain, tmp_path, capsys, extra, yaml_text, match):
    if yaml_text:
        (tmp_path / "c.yaml").write_text(yaml_text)
        extra = ["--config", str(tmp_path / "c.yaml")]
    out = tmp_path / "out"
    rc = main(["train", *cli_flags(plain, out), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and match in err, err
    assert not out.exists() or not list(out.iterdir())  # nothing written


def test_resume_after_the_last_iteration_of_an_epoch(plain, tmp_path):
    """A signal during the last step of an epoch saves (epoch, iterations per epoch): resuming
    from there only closes the epoch."""
    train(tiny_config(plain, tmp_path, cache="yes", max_steps=3, saveckp_freq=0))  # 3 iterations per epoch
    assert (load_for_resume(tmp_path)["epoch"], load_for_resume(tmp_path)["iter_in_epoch"]) == (0, 3)
    assert train(tiny_config(plain, tmp_path, cache="yes", saveckp_freq=0))["epochs"] == 2
    epochs = [json.loads(line) for line in (tmp_path / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 0, 1] and epochs[1]["train_loss"] is None
