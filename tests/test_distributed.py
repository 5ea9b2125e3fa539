"""Two processes with gloo on this machine: teachers stay identical, the center is averaged,
Sinkhorn-Knopp balances over both ranks."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

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
