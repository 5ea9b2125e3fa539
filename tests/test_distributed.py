"""Two processes with gloo on this machine: teachers stay identical, the center is averaged,
Sinkhorn-Knopp balances over both ranks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from dinokit.train import DINOLoss, load_config
from dinokit.train.loss import sinkhorn_knopp
from dinokit.train.trainer import Trainer

from test_train_loop import TINY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sk_logits() -> torch.Tensor:
    return torch.randn(6, 5, generator=torch.Generator().manual_seed(0))


def worker(rank: int, world: int, port: int, data: str, out: str, budget: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = load_config({**TINY, "device": "cpu", "data_path": data, "output_dir": out, "epochs": 1,
                       "batch_size_per_gpu": 10, "dist_timeout_s": 60, "time_budget": budget or ""})
    trainer = Trainer(cfg)
    trainer.fit()
    # One center update with rank-specific teacher outputs: the result must be the global mean.
    loss = DINOLoss(4, 2, 0.04, 0.04, 0, 1, center_momentum=0.0)
    loss.update_center(torch.full((3, 4), float(rank + 1)))
    # Sinkhorn-Knopp balances prototypes over both ranks' rows together.
    sk_rows = sinkhorn_knopp(sk_logits()[3 * rank:3 * rank + 3], 0.1)
    first_batch = next(trainer.data.epoch(0))[0]
    torch.save({"teacher": trainer.teacher.state_dict(), "center": trainer.loss.center,
                "probe_center": loss.center, "sk_rows": sk_rows, "first_batch": first_batch},
               os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


# With a time budget the schedules follow the clock: every process must read the same clock,
# or teacher momenta differ and one process stops while the other waits for it.
@pytest.mark.parametrize("budget", [None, "8s"], ids=["epochs", "time_budget"])
def test_two_gloo_processes_keep_teachers_identical(cifar_small, tmp_path, budget):
    train_dir, _ = cifar_small
    mp.spawn(worker, args=(2, free_port(), str(train_dir), str(tmp_path), budget), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(r0["first_batch"], r1["first_batch"])  # each rank saw its own images
    for k in r0["teacher"]:
        assert torch.equal(r0["teacher"][k], r1["teacher"][k]), k
    assert torch.equal(r0["center"], r1["center"]) and r0["center"].abs().sum() > 0
    torch.testing.assert_close(r0["probe_center"], torch.full((1, 4), 1.5))
    whole = sinkhorn_knopp(sk_logits(), 0.1)  # one process, all six rows
    torch.testing.assert_close(torch.cat((r0["sk_rows"], r1["sk_rows"])), whole)
    assert not torch.allclose(sinkhorn_knopp(sk_logits()[:3], 0.1), whole[:3], atol=1e-3)
    assert (tmp_path / "checkpoint.pth").exists() and not (tmp_path / "rank1" / "checkpoint.pth").exists()


def cli_worker(rank: int, world: int, port: int, argv: list[str], out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import dinokit.eval.features as features
    from dinokit.cli.main import main
    embedded, embed_batch = [], features.embed_batch

    def counting(model, embed, x, device):  # images this process put through the network
        embedded.append(len(x))
        return embed_batch(model, embed, x, device)

    features.embed_batch = counting
    with open(os.path.join(out, f"stdout{rank}.txt"), "w") as sys.stdout:
        assert main(argv) == 0
    Path(out, f"embedded{rank}.txt").write_text(str(sum(embedded)))


def test_knn_under_torchrun_splits_extraction_and_matches_one_process(cifar_small, tmp_path, capsys):
    from dinokit.cli.main import main
    train_dir, test_dir = tmp_path / "train", cifar_small[1]
    shutil.copytree(cifar_small[0], train_dir)
    (train_dir / "airplane" / "broken.jpg").write_bytes(b"not a jpeg")  # skipped by whichever rank reads it
    argv = ["knn", "--train_path", str(train_dir), "--val_path", str(test_dir), "--random_init", "--arch",
            "vit_tiny", "--patch_size", "8", "--image_size", "32", "--nb_knn", "5", "20", "--num_workers", "0",
            "--device", "cpu", "--quiet"]
    assert main([*argv, "--dump_features", str(tmp_path / "one")]) == 0
    one = capsys.readouterr().out.splitlines()[-1]
    mp.spawn(cli_worker, args=(2, free_port(), [*argv, "--dump_features", str(tmp_path / "two")], str(tmp_path)),
             nprocs=2, join=True)
    assert (tmp_path / "stdout1.txt").read_text() == ""  # process 1 helped extract, reports nothing
    halves = [int((tmp_path / f"embedded{r}.txt").read_text()) for r in (0, 1)]
    assert sum(halves) == 400 and abs(halves[0] - halves[1]) <= 2, halves  # each image once, split in two
    two = (tmp_path / "stdout0.txt").read_text().splitlines()[-1]
    assert json.loads(two)["results"] == json.loads(one)["results"]
    for split in ("train", "val"):
        a, b = (torch.load(tmp_path / run / f"{split}.pt", weights_only=True) for run in ("one", "two"))
        assert a["paths"] == b["paths"] and torch.equal(a["labels"], b["labels"])  # the same rows, in order
        torch.testing.assert_close(a["features"], b["features"])
    assert len(a["paths"]) == 100 and len(torch.load(tmp_path / "two" / "train.pt")["paths"]) == 300
    assert "broken.jpg" not in str(torch.load(tmp_path / "two" / "train.pt")["paths"])
    assert one.startswith('{"command": "knn", "train": 300, "val": 100')


def test_linear_under_torchrun_extracts_in_both_processes_and_trains_once(cifar_small, tmp_path, capsys):
    from dinokit.cli.main import main
    argv = ["linear", "--train_path", str(cifar_small[0]), "--val_path", str(cifar_small[1]), "--random_init",
            "--arch", "vit_tiny", "--patch_size", "8", "--image_size", "32", "--n_last_blocks", "1", "--epochs", "3",
            "--num_workers", "0", "--device", "cpu", "--quiet"]
    assert main([*argv, "--output_dir", str(tmp_path / "one")]) == 0
    one = json.loads(capsys.readouterr().out.splitlines()[-1])
    mp.spawn(cli_worker, args=(2, free_port(), [*argv, "--output_dir", str(tmp_path / "two")], str(tmp_path)),
             nprocs=2, join=True)
    assert (tmp_path / "stdout1.txt").read_text() == ""
    two = json.loads((tmp_path / "stdout0.txt").read_text().splitlines()[-1])
    assert (two["train"], two["val"]) == (300, 100) and two["top1"] == pytest.approx(one["top1"], abs=1.0)
    assert (tmp_path / "two" / "linear.pth").is_file()


def test_retrieve_and_copydetect_under_torchrun_split_extraction_and_match_one_process(cifar_small, tmp_path,
                                                                                     capsys):
    from dinokit.cli.main import main
    train_dir, test_dir = cifar_small
    copies = tmp_path / "copies"
    for name in ("query", "database", "whitening"):
        (copies / name).mkdir(parents=True)
    for i, f in enumerate(sorted((test_dir / "cat").iterdir())[:9]):
        (copies / "database" / f.name).write_bytes(f.read_bytes())
        Image.open(f).rotate(10 * i).save(copies / "query" / f.name)  # edited copies
    for f in sorted((train_dir / "dog").iterdir())[:7]:
        (copies / "whitening" / f.name).write_bytes(f.read_bytes())
    net = ["--random_init", "--arch", "vit_tiny", "--patch_size", "8", "--num_workers", "0", "--device", "cpu",
           "--quiet", "--precision", "fp32"]
    commands = [["retrieve", "--query", str(test_dir), "--gallery", str(train_dir), "--imsize", "32", *net],
                ["copydetect", "--data_path", str(copies), "--imsize", "32", *net]]
    for argv in commands:
        assert main(argv) == 0
        one = json.loads(capsys.readouterr().out.splitlines()[-1])
        mp.spawn(cli_worker, args=(2, free_port(), argv, str(tmp_path)), nprocs=2, join=True)
        assert (tmp_path / "stdout1.txt").read_text() == ""  # process 1 helped extract, reports nothing
        halves = [int((tmp_path / f"embedded{r}.txt").read_text()) for r in (0, 1)]
        total = 400 if argv[0] == "retrieve" else 9 + 9 + 7
        assert sum(halves) == total and abs(halves[0] - halves[1]) <= 3, halves  # every image once, split
        two = json.loads((tmp_path / "stdout0.txt").read_text().splitlines()[-1])
        scores = ("mAP", "mP@1", "mP@5", "queries") if argv[0] == "retrieve" else ("mAP", "top1", "database")
        for key in scores:
            assert two[key] == pytest.approx(one[key], abs=1e-3), (argv[0], key)
    assert one["whitened"] and one["queries"] == 9


def test_submit_runs_the_job_tasks_as_one_distributed_training(cifar_small, tmp_path, capsys):
    pytest.importorskip("submitit")  # an optional integration; the dev install has it
    from dinokit.cli.main import main
    out = tmp_path / "run"
    flags = []
    for k, v in {**TINY, "data_path": str(cifar_small[0]), "output_dir": str(out), "max_steps": 3, "epochs": 1,
                 "batch_size_per_gpu": 10, "num_workers": 0, "device": "cpu"}.items():
        flags += [f"--{k}", str(v).lower() if isinstance(v, bool) else str(v)]
    assert main(["submit", "--cluster", "local", "--nodes", "1", "--ngpus", "2", *flags]) == 0
    info = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert info["command"] == "submit" and info["epochs"] == 0  # stopped after max_steps, inside epoch 0
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert (ckpt["epoch"], ckpt["iter_in_epoch"]) == (0, 3)
    # Two tasks, one process group: 300 images in batches of 10 per task make 15 iterations per epoch.
    assert "15 iterations per epoch" in (Path(info["logs"]) / f"{info['job_id']}_0_log.err").read_text()
    assert main(["submit", *flags]) == 2  # no sbatch on this machine: one line, nothing queued
    assert "no SLURM here" in capsys.readouterr().err
    # A task that fails (one image, batches of 10 per task) is one line naming its error, not a traceback.
    one = tmp_path / "one" / "a"
    one.mkdir(parents=True)
    shutil.copy(next(cifar_small[0].glob("*/*.jpg")), one)
    bad = [f if f != str(cifar_small[0]) else str(one.parent) for f in flags]
    assert main(["submit", "--cluster", "local", "--nodes", "1", "--ngpus", "2", *bad,
                 "--output_dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dinokit submit: error: the job failed: ConfigError: batch of 20 images") and \
        "Traceback" not in "\n".join(err)
