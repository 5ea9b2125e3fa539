"""End-to-end training on real CIFAR-10 images: outputs, resume, divergence, time budget."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import torch

from dinokit.data import EvalTransform
from dinokit.errors import DataError
from dinokit.models import CheckpointError, load_pretrained
from dinokit.train import load_config
from dinokit.train.networks import build_student_teacher
from dinokit.train.fp16 import OverflowMonitor
from dinokit.train.online_knn import decode_pair
from dinokit.train.trainer import Trainer, TrainingDiverged, train

TINY = {"arch": "vit_tiny", "patch_size": 8, "out_dim": 256, "global_crops_size": 32, "local_crops_size": 16,
        "local_crops_number": 2, "batch_size_per_gpu": 20, "canvas_size": 32, "num_workers": 0, "epochs": 2,
        "warmup_epochs": 1, "lr": 0.001, "head_hidden_dim": 64, "head_bottleneck_dim": 32, "report": False,
        "drop_path_rate": 0.1, "saveckp_freq": 1, "log_every": 1,
        # bf16 on a GPU: fp16 would skip the first steps of these short runs (overflow); on a CPU
        # auto, which is fp32 where bf16 would be emulated (minutes per run)
        "precision": "bf16" if torch.cuda.is_available() else "auto"}


def tiny_config(data, out, **kw):
    return load_config({**TINY, "data_path": str(data), "output_dir": str(out), **kw})


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(sd):
    return {k: v.clone() for k, v in sd.items()}


def test_training_writes_official_checkpoint_and_logs(cifar_small, tmp_path):
    train_dir, test_dir = cifar_small
    cfg = tiny_config(train_dir, tmp_path, knn_every=1, knn_train_path=str(train_dir), knn_val_path=str(test_dir))
    result = train(cfg)
    assert result["epochs"] == 2
    ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert {"student", "teacher", "optimizer", "epoch", "args", "dino_loss"} <= ckpt.keys()
    assert ckpt["epoch"] == 2 and ckpt["args"]["arch"] == "vit_tiny"
    assert "head.last_layer.weight_g" in ckpt["teacher"] and "backbone.pos_embed" in ckpt["teacher"]
    assert (tmp_path / "checkpoint0000.pth").exists() and (tmp_path / "checkpoint0001.pth").exists()
    # The teacher moved, but less than the student (EMA), and differs from it.
    assert not torch.equal(ckpt["teacher"]["backbone.cls_token"], ckpt["student"]["backbone.cls_token"])
    epochs = read_jsonl(tmp_path / "log.txt")
    assert [e["epoch"] for e in epochs] == [0, 1]
    for e in epochs:
        assert math.isfinite(e["train_loss"]) and 0 < e["teacher_entropy"] <= math.log(256) + 1e-3
        assert 0 <= e["knn_top1"] <= 100 and e["effective_rank"] > 1
    steps = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(steps) == 2 * (300 // 20) and steps[0]["lr"] == 0.0 and steps[-1]["momentum"] > 0.996
    assert abs(ckpt["dino_loss"]["center"]).sum() > 0
    backbone = load_pretrained(tmp_path / "checkpoint.pth")
    assert backbone.patch_size == 8 and backbone(torch.randn(2, 3, 32, 32)).shape == (2, 192)


def test_interrupted_run_resumes_to_the_same_weights(cifar_small, tmp_path, caplog):
    train_dir, _ = cifar_small
    full = tiny_config(train_dir, tmp_path / "full", saveckp_freq=0)
    train(full)
    reference = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)
    # The same command on a finished run trains nothing, says so, and leaves the checkpoint alone.
    with caplog.at_level(logging.INFO, logger="dinokit"):
        assert train(full)["epochs"] == 2
    assert "has finished its schedule (epoch 2" in caplog.text and "a larger --epochs" in caplog.text
    assert torch.equal(torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)["teacher"][
        "backbone.cls_token"], reference["teacher"]["backbone.cls_token"])
    # Stop mid-epoch 0 (as a signal would), then run the same command again.
    part = tiny_config(train_dir, tmp_path / "part", saveckp_freq=0, max_steps=7)
    train(part)
    mid = torch.load(tmp_path / "part" / "checkpoint.pth", weights_only=True)
    assert (mid["epoch"], mid["iter_in_epoch"]) == (0, 7)
    train(tiny_config(train_dir, tmp_path / "part", saveckp_freq=0))
    resumed = torch.load(tmp_path / "part" / "checkpoint.pth", weights_only=True)
    assert resumed["epoch"] == 2
    for key in ("backbone.blocks.11.mlp.fc2.weight", "backbone.cls_token", "head.last_layer.weight_v"):
        torch.testing.assert_close(resumed["teacher"][key], reference["teacher"][key], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(resumed["student"][key], reference["student"][key], rtol=1e-4, atol=1e-5)


def test_resume_with_other_shapes_is_a_clear_error_that_keeps_the_checkpoint(cifar_small, tmp_path):
    train_dir, _ = cifar_small
    train(tiny_config(train_dir, tmp_path, saveckp_freq=0, max_steps=3))
    saved = (tmp_path / "checkpoint.pth").read_bytes()
    for change, named in (({"out_dim": 512}, "--out_dim 256 -> 512"),
                          ({"optimizer": "sgd"}, "--optimizer adamw -> sgd"),
                          ({"arch": "vit_small"}, "--arch vit_tiny -> vit_small"),
                          ({"global_crops_size": 48, "canvas_size": 48}, "--global_crops_size 32 -> 48")):
        with pytest.raises(CheckpointError, match=f"cannot resume .*{named}.*new --output_dir") as err:
            train(tiny_config(train_dir, tmp_path, saveckp_freq=0, **change))
        assert "\n" not in str(err.value)
    assert (tmp_path / "checkpoint.pth").read_bytes() == saved  # nothing lost
    # A checkpoint without its flags (written by other code): torch's own reason, on one line.
    ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    del ckpt["args"]
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    with pytest.raises(CheckpointError, match="cannot resume .*size mismatch for head") as err:
        train(tiny_config(train_dir, tmp_path, saveckp_freq=0, out_dim=512))
    assert "\n" not in str(err.value)
    torch.save({**ckpt, "args": TINY}, tmp_path / "checkpoint.pth")
    train(tiny_config(train_dir, tmp_path, saveckp_freq=0, max_steps=5))  # the same flags resume
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["iter_in_epoch"] > 3


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(cifar_small, tmp_path, monkeypatch):
    train_dir, _ = cifar_small
    cfg = tiny_config(train_dir, tmp_path, epochs=3)
    trainer = Trainer(cfg)
    real_step = trainer.train_step
    calls = {"n": 0}

    def step(images, hw, it, epoch, values, diagnose=False):
        calls["n"] += 1
        loss, stats = real_step(images, hw, it, epoch, values, diagnose)
        return (loss * float("nan") if epoch == 1 and it % 15 == 3 else loss), stats
    monkeypatch.setattr(trainer, "train_step", step)
    with pytest.raises(TrainingDiverged, match="--lr") as err:
        trainer.fit()
    assert "precision fp32" in str(err.value) and "teacher_temp" in str(err.value)
    kept = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["student"].values())


def test_fp16_overflow_that_skips_most_steps_is_reported(cifar_small, tmp_path, caplog):
    # A CPU grad scaler whose scale overflows the loss itself: every step is skipped, as fp16 on a
    # GPU does while its scale is too high, and the student must not have moved.
    train_dir, _ = cifar_small
    trainer = Trainer(tiny_config(train_dir, tmp_path, epochs=1, max_steps=3))
    trainer.overflow = OverflowMonitor(torch.amp.GradScaler("cpu", init_scale=3e38, backoff_factor=0.9))
    before = weights(trainer.student.state_dict())
    with caplog.at_level(logging.WARNING, logger="dinokit"):
        trainer.fit()
    record = read_jsonl(tmp_path / "log.txt")[-1]
    assert record["fp16_skipped_steps"] == 3 and record["loss_scale"] == pytest.approx(3e38 * 0.9 ** 3, rel=1e-5)
    assert "3 of 3 steps were skipped" in record["fp16_warning"] and "--precision bf16" in caplog.text
    after = trainer.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_time_budget_fits_the_whole_schedule(cifar_small, tmp_path):
    train_dir, _ = cifar_small
    cfg = tiny_config(train_dir, tmp_path, time_budget="6s", epochs=100, warmup_epochs=10,
                      warmup_teacher_temp=0.02, teacher_temp=0.04, warmup_teacher_temp_epochs=50,
                      global_crops_size_start=16, global_crops_scale=(0.3, 1.0), global_crops_scale_start=0.9)
    result = train(cfg)
    assert 4 < result["elapsed_s"] < 30
    steps = read_jsonl(tmp_path / "metrics.jsonl")
    lrs = [s["lr"] for s in steps]
    peak = max(lrs)
    assert peak > 0.5 * 0.001 * 20 / 256  # warm-up reached near its peak (10% of the budget)
    assert lrs[-1] < 0.5 * peak           # and the cosine decayed within the budget
    assert steps[-1]["momentum"] > 0.999 and steps[-1]["teacher_temp"] == pytest.approx(0.04)
    sizes = [s["global_size"] for s in steps]  # progressive resizing: 16 px, then 24, then 32
    assert sizes[0] == 16 and sizes[-1] == 32 and sizes == sorted(sizes)
    lows = [s["global_scale"][0] for s in steps]  # crop curriculum: the least area from 0.9 towards 0.3
    assert lows[0] > 0.8 and lows[-1] < 0.5 and lows == sorted(lows, reverse=True)


def test_forced_collapse_is_flagged_and_healthy_run_is_not(cifar_small, tmp_path):
    train_dir, _ = cifar_small
    train(tiny_config(train_dir, tmp_path / "healthy", epochs=1))
    healthy = read_jsonl(tmp_path / "healthy" / "log.txt")[-1]
    assert healthy["collapse_warning"] is None and healthy["teacher_entropy"] < 0.9 * math.log(256)
    # Teacher temperature 1.0 and no centering: the teacher's output is flat.
    train(tiny_config(train_dir, tmp_path / "collapsed", epochs=1, teacher_temp=1.0, warmup_teacher_temp=1.0,
                      center_momentum=1.0))
    collapsed = read_jsonl(tmp_path / "collapsed" / "log.txt")[-1]
    assert collapsed["collapse_warning"] and "uniform" in collapsed["collapse_warning"]


def test_sinkhorn_knopp_centering_and_koleo_train_and_are_logged(cifar_small, tmp_path):
    train_dir, _ = cifar_small
    train(tiny_config(train_dir, tmp_path, epochs=1, centering="sinkhorn_knopp", koleo_loss_weight=0.1))
    last = read_jsonl(tmp_path / "log.txt")[-1]
    assert math.isfinite(last["train_loss"]) and math.isfinite(last["koleo"])
    # Sinkhorn-Knopp spreads each batch over all prototypes: the batch-averaged target is near uniform.
    assert last["batch_entropy"] > 0.9 * math.log(256) and last["collapse_warning"] is None
    ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert ckpt["args"]["centering"] == "sinkhorn_knopp" and ckpt["args"]["koleo_loss_weight"] == 0.1


def test_cifar_resnet_trains_with_local_crops_and_loads_back(cifar_small, tmp_path):
    train_dir, _ = cifar_small
    cfg = tiny_config(train_dir, tmp_path, arch="resnet18_cifar", epochs=1, max_steps=6)
    student_net, teacher_net = build_student_teacher(cfg)
    for net in (student_net, teacher_net):  # weights stored in the layout of the activations
        assert net.backbone.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    train(cfg)
    ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    teacher, student = ckpt["teacher"], ckpt["student"]
    assert teacher["backbone.layer4.1.conv2.weight"].shape == (256, 256, 3, 3)  # torchvision names
    # The teacher's batch norms track its own activations (train mode), its weights follow the EMA.
    assert teacher["backbone.bn1.num_batches_tracked"] > 0
    assert not torch.equal(teacher["backbone.conv1.weight"], student["backbone.conv1.weight"])
    assert math.isfinite(read_jsonl(tmp_path / "metrics.jsonl")[-1]["loss"])
    backbone = load_pretrained(tmp_path / "checkpoint.pth")  # depth and stem read off the tensors
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, 256)


def test_compiled_networks_train_like_the_eager_ones(cifar_small, tmp_path):
    from torch._dynamo.utils import counters

    train_dir, _ = cifar_small
    kw = dict(arch="resnet18_cifar", epochs=1, max_steps=2, local_crops_number=0, batch_size_per_gpu=8)
    train(tiny_config(train_dir, tmp_path / "eager", **kw))
    counters.clear()
    train(tiny_config(train_dir, tmp_path / "compiled", compile=True, **kw))
    assert counters["stats"]["unique_graphs"] >= 2  # the student and the teacher ran compiled
    eager, compiled = (read_jsonl(tmp_path / run / "metrics.jsonl") for run in ("eager", "compiled"))
    assert compiled[0]["loss"] == pytest.approx(eager[0]["loss"], rel=0.02)  # same seed, same first batch
    saved = [torch.load(tmp_path / run / "checkpoint.pth", weights_only=True) for run in ("eager", "compiled")]
    assert saved[1]["student"].keys() == saved[0]["student"].keys()  # no "_orig_mod." prefix


def test_a_network_that_fails_to_compile_runs_eagerly_and_its_own_errors_still_raise(monkeypatch, caplog):
    import torch._inductor.config as inductor

    from dinokit.train.compiled import CompiledOrEager

    torch._dynamo.reset()
    monkeypatch.setattr(inductor, "fx_graph_cache", False)  # a cached kernel would need no compiler
    monkeypatch.setattr(inductor.cpp, "cxx", ("dinokit-no-such-compiler",))  # a machine without one
    caplog.set_level(logging.WARNING, logger="dinokit")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    run, x = CompiledOrEager(net, "student"), torch.randn(3, 8)
    for _ in range(2):
        out = run(x)
        assert torch.equal(out, net(x))
    out.sum().backward()
    assert net[0].weight.grad is not None and run.compiled is None
    assert caplog.text.count("--compile: compiling the student failed, it runs eagerly (") == 1

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError(f"bad input of shape {tuple(x.shape)}")

    broken = CompiledOrEager(Broken(), "teacher")
    with pytest.raises(ValueError, match=r"bad input of shape \(3, 8\)") as raised:
        broken(x)
    assert raised.value.__context__ is None  # not chained to the compiled call's traceback
    assert "teacher" not in caplog.text


def test_images_far_smaller_than_the_crops_are_warned_about_once(cifar_small, tmp_path, caplog):
    train_dir, _ = cifar_small
    caplog.set_level(logging.WARNING, logger="dinokit")
    train(tiny_config(train_dir, tmp_path / "fit", max_steps=2, cache="no"))
    assert "images are small" not in caplog.text  # 32 px images, 32 px crops
    for cache in ("no", "yes"):  # both data paths: DataLoader workers and the in-memory cache
        caplog.clear()
        train(tiny_config(train_dir, tmp_path / cache, patch_size=16, global_crops_size=64, local_crops_size=32,
                          canvas_size=0, max_steps=2, cache=cache))
        assert caplog.text.count("median longer side 32 px) for 64 px global crops: each crop is enlarged 2x") == 1


def test_batch_norms_become_synchronised_ones_with_the_same_checkpoint_keys(cifar_small, tmp_path):
    from dinokit.train.networks import has_batch_norms, sync_batch_norms

    cfg = tiny_config(cifar_small[0], tmp_path, arch="resnet18_cifar", use_bn_in_head=True)
    student, teacher = build_student_teacher(cfg)
    keys = list(student.state_dict())
    assert has_batch_norms(student)
    synced = sync_batch_norms(student, teacher)
    for net in synced:  # what the release does on GPUs: statistics over the batch of all processes
        kinds = {type(m) for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
        assert kinds == {torch.nn.SyncBatchNorm}
        assert list(net.state_dict()) == keys
    vit, _ = build_student_teacher(tiny_config(cifar_small[0], tmp_path))
    assert not has_batch_norms(vit)  # a ViT with the default head: nothing to synchronise


def test_numbered_checkpoints_are_named_as_the_release_names_them(cifar_small, tmp_path):
    train(tiny_config(cifar_small[0], tmp_path, epochs=5, saveckp_freq=2, batch_size_per_gpu=100))
    # main_dino.py saves checkpoint{epoch:04}.pth when epoch % saveckp_freq == 0: epochs 0, 2, 4
    names = sorted(p.name for p in tmp_path.glob("checkpoint*.pth"))
    assert names == ["checkpoint.pth", "checkpoint0000.pth", "checkpoint0002.pth", "checkpoint0004.pth"]
    assert torch.load(tmp_path / "checkpoint0002.pth", weights_only=True)["epoch"] == 3  # the next to train


def test_a_run_of_the_release_resumes_from_its_checkpoint(cifar_small, tmp_path, caplog):
    import argparse

    train(tiny_config(cifar_small[0], tmp_path, epochs=1, warmup_epochs=0))
    ours = torch.load(tmp_path / "checkpoint.pth", weights_only=False)
    # As main_dino.py writes it: a DDP-wrapped student, a Namespace of flags, none of dinokit's extras.
    torch.save({"student": {f"module.{k}": v for k, v in ours["student"].items()}, "teacher": ours["teacher"],
                "optimizer": ours["optimizer"], "epoch": 1, "dino_loss": ours["dino_loss"],
                "args": argparse.Namespace(arch="vit_tiny", patch_size=8, out_dim=256, epochs=1)},
               tmp_path / "checkpoint.pth")
    with caplog.at_level(logging.INFO, logger="dinokit"):
        result = train(tiny_config(cifar_small[0], tmp_path, epochs=2, warmup_epochs=0))
    assert "resumed from" in caplog.text and "at epoch 1, iteration 0" in caplog.text and result["epochs"] == 2
    after = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert not torch.equal(after["teacher"]["backbone.cls_token"], ours["teacher"]["backbone.cls_token"])


def test_a_refused_run_leaves_no_output_folder_behind(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        train(tiny_config(tmp_path / "no_images_here", tmp_path / "runs" / "a"))
    assert not (tmp_path / "runs").exists()


def test_train_takes_a_dict_of_flag_values(cifar_small, tmp_path):
    result = train({**TINY, "data_path": str(cifar_small[0]), "output_dir": str(tmp_path), "max_steps": 2})
    assert result["epochs"] == 0 and (tmp_path / "checkpoint.pth").is_file()
    with pytest.raises(TypeError, match="takes a TrainConfig or a dict"):
        train(str(tmp_path))


def test_online_knn_matches_val_labels_to_train_classes_by_name(cifar_small, tmp_path):
    train_dir, test_dir = cifar_small
    for cls in ("ship", "truck"):
        shutil.copytree(test_dir / cls, tmp_path / "val" / cls)
    transform = EvalTransform(resize=32, crop=32)
    train_x, train_y, val_x, val_y = decode_pair(str(train_dir), str(tmp_path / "val"), transform)
    assert len(train_x) == 300 and len(val_x) == 20
    assert sorted(set(val_y.tolist())) == [8, 9]  # ship and truck among the 10 train classes
    (tmp_path / "val" / "unicorn").mkdir()
    shutil.copy(next((test_dir / "cat").iterdir()), tmp_path / "val" / "unicorn" / "u.jpg")
    with pytest.raises(DataError, match="val classes without a train folder: unicorn"):
        decode_pair(str(train_dir), str(tmp_path / "val"), transform)
    # Folders that cannot be scored stop the run before its first step, not after its first epoch.
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted((test_dir / "cat").iterdir())[:3]:
        shutil.copy(f, flat / f.name)
    cfg = tiny_config(train_dir, tmp_path / "run", knn_every=1, knn_train_path=str(flat), knn_val_path=str(flat))
    with pytest.raises(DataError, match="the k-NN train folder .* needs class sub-folders"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoint.pth").exists() and not (tmp_path / "run" / "log.txt").exists()


def test_pretrained_weights_start_both_backbones_and_a_resume_does_not_need_them(cifar_small, tmp_path,
                                                                                 monkeypatch):
    from dinokit.errors import ConfigError
    from dinokit.models import interpolate_pos_embed, resnet18_cifar, vit_tiny
    train_dir, _ = cifar_small
    torch.manual_seed(1)
    source = vit_tiny(patch_size=8, img_size=64)  # an 8x8 grid, resized to the 4x4 grid of 32 px crops
    torch.save(source.state_dict(), tmp_path / "w.pth")
    cfg = tiny_config(train_dir, tmp_path / "run", pretrained_weights=str(tmp_path / "w.pth"), max_steps=1)
    trainer = Trainer(cfg)
    try:
        trainer.resume()  # no checkpoint yet: the backbones come from the weights
        for net in (trainer.student, trainer.teacher):
            sd = net.backbone.state_dict()
            assert torch.equal(sd["blocks.3.attn.qkv.weight"], source.state_dict()["blocks.3.attn.qkv.weight"])
            torch.testing.assert_close(sd["pos_embed"], interpolate_pos_embed(source.pos_embed.detach(), 4, 4))
    finally:
        trainer.release()
    train(cfg)  # one step, then a checkpoint: a rerun resumes from it and never reads the weights again
    (tmp_path / "w.pth").unlink()
    assert train(tiny_config(train_dir, tmp_path / "run", pretrained_weights=str(tmp_path / "w.pth"),
                             max_steps=2))["epochs"] == 0
    torch.save(resnet18_cifar().state_dict(), tmp_path / "r.pth")
    monkeypatch.setattr("dinokit.train.trainer.TrainBatches", lambda *a: pytest.fail("data read before refusing"))
    with pytest.raises(ConfigError, match="holds resnet18_cifar weights but this run builds vit_tiny/8"):
        Trainer(tiny_config(train_dir, tmp_path / "run2", pretrained_weights=str(tmp_path / "r.pth"))).fit()
