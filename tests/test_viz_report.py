"""The training report: plots exist, are referenced, config values appear, missing pieces are notes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from dinokit.errors import DataError
from dinokit.models import DINOHead, vit_tiny
from dinokit.viz.plots import moving_average, plot_curves
from dinokit.viz.report import load_run, write_report

OUT_DIM = 64


def make_run_dir(root: Path, data_path: Path | None, epochs: int = 3, checkpoint: bool = True,
                 knn: bool = True, diagnostics: bool = True, warning_epoch: int | None = None) -> Path:
    """A training output directory in the trainer's format (config.yaml, log.txt, metrics.jsonl,
    checkpoint.pth with student/teacher ``backbone.*``/``head.*`` weights)."""
    root.mkdir(parents=True, exist_ok=True)
    config = {"arch": "vit_tiny", "patch_size": 4, "out_dim": OUT_DIM, "lr": 0.0005, "epochs": 10,
              "batch_size_per_gpu": 32, "global_crops_size": 32, "local_crops_number": 6,
              "data_path": str(data_path) if data_path else None, "teacher_temp": 0.04}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    with open(root / "log.txt", "w") as f:
        for e in range(epochs):
            rec = {"epoch": e, "train_loss": 9.0 - e, "train_lr": 1e-4 * (e + 1), "train_wd": 0.04 + 0.01 * e,
                   "teacher_temp": 0.04, "momentum": 0.996 + 0.001 * e, "img_per_s": 100.0 + e,
                   "elapsed_s": 30.0 * (e + 1)}
            if knn:
                rec.update(knn_top1=20.0 + e, knn_top5=50.0 + e)
            if diagnostics:
                rec.update(teacher_entropy=2.0 - 0.1 * e, batch_entropy=3.5, kl_teacher_student=0.5,
                           center_norm=0.1 * e, effective_rank=20.0 + e,
                           collapse_warning="collapse warning: test text" if e == warning_epoch else None)
            f.write(json.dumps(rec) + "\n")
    with open(root / "metrics.jsonl", "w") as f:
        for step in range(0, 10 * epochs, 5):
            rec = {"step": step, "epoch": step // 10, "loss": 9.0 - step / 10, "lr": 1e-5 * step, "wd": 0.04,
                   "teacher_temp": 0.04, "momentum": 0.996, "img_per_s": 90.0}
            f.write(json.dumps(rec) + "\n")
        f.write('{"step": 999, "loss": \n')  # a line being written
    if checkpoint:
        torch.manual_seed(0)
        backbone = vit_tiny(patch_size=4, img_size=32)
        head = DINOHead(192, OUT_DIM, bottleneck_dim=32, hidden_dim=64)
        net = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
               **{f"head.{k}": v for k, v in head.state_dict().items()}}
        torch.save({"student": net, "teacher": net, "optimizer": {}, "epoch": epochs, "args": config,
                    "dino_loss": {"center": torch.zeros(1, OUT_DIM)}}, root / "checkpoint.pth")
    return root


def referenced_pngs(report: Path) -> list[Path]:
    srcs = re.findall(r'<img src="([^"]+)"', report.read_text())
    return [report.parent / s for s in srcs]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, cifar_root) -> Path:
    from conftest import copy_subset

    return copy_subset(cifar_root / "test", tmp_path_factory.mktemp("data"), per_class=1, classes=3)


def test_full_report(tmp_path, data_dir):
    run = make_run_dir(tmp_path / "run", data_dir, warning_epoch=1)
    (run / "report_images").mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(run / "report_images" / "a_red.png")
    path = write_report(run, attention_images=3)
    assert path == run / "report.html"
    text = path.read_text()
    pngs = referenced_pngs(path)
    names = {p.name for p in pngs}
    assert {"loss_steps.png", "loss_epochs.png", "schedules.png", "knn.png", "entropy.png", "collapse.png",
            "throughput.png", "attention.png"} <= names
    for p in pngs:
        assert p.parent == run / "report" and p.is_file() and Image.open(p).format == "PNG"
    assert not re.search(r'src="/', text)  # relative paths only
    for value in ("vit_tiny", "global_crops_size", "0.0005", "batch_size_per_gpu", str(data_dir)):
        assert value in text
    assert 'class="warning"' in text and "collapse warning: test text" in text and "epoch 1" in text
    assert "a_red.png" in text  # report_images/ come first among the attention images
    assert "skipped 1 unreadable line" in text


def test_attention_skips_images_that_do_not_decode(tmp_path, data_dir, caplog):
    run = make_run_dir(tmp_path / "run", data_dir)
    (run / "report_images").mkdir()
    (run / "report_images" / "a_broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (40, 40), (30, 200, 30)).save(run / "report_images" / "b_green.png")
    text = write_report(run, attention_images=3).read_text()
    assert "attention.png" in {p.name for p in referenced_pngs(run / "report.html")}
    caption = text[text.index("<h2>Attention maps</h2>"):]
    assert "b_green.png" in caption and "a_broken.jpg" not in caption
    assert caption.split("Images: ")[1].split(".</p>")[0].count(", ") == 2  # still 3 images
    assert "a_broken.jpg" in caplog.text and "cannot be decoded" in caplog.text


def test_report_with_missing_pieces_is_notes_not_a_crash(tmp_path):
    run = make_run_dir(tmp_path / "run", None, epochs=2, checkpoint=False, knn=False, diagnostics=False)
    (run / "metrics.jsonl").unlink()
    text = write_report(run).read_text()
    assert "no checkpoint.pth yet" in text and "no k-NN evaluation" in text
    assert "no collapse diagnostics" in text and "no metrics.jsonl yet" in text
    assert all(p.is_file() for p in referenced_pngs(run / "report.html"))
    assert "loss_epochs.png" in text and "schedules.png" in text  # per-epoch values still plotted

    (run / "log.txt").unlink()
    text = write_report(run).read_text()  # a run that has written only its config.yaml
    assert "no log.txt yet" in text and "<img" not in text
    assert write_report(run / "config.yaml") == run / "report.html"  # a file of the run names its folder
    (run / "config.yaml").unlink()
    with pytest.raises(DataError, match="not a training run's --output_dir"):
        write_report(run)


def test_report_recomputes_warnings_and_survives_a_bad_checkpoint(tmp_path, data_dir):
    run = make_run_dir(tmp_path / "run", data_dir, epochs=2, checkpoint=False)
    lines = [json.loads(x) for x in (run / "log.txt").read_text().splitlines()]
    lines[1].pop("collapse_warning")
    lines[1].update(teacher_entropy=0.01, batch_entropy=0.02)  # one prototype for all samples
    (run / "log.txt").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "checkpoint.pth").write_bytes(b"not a checkpoint")
    text = write_report(run, attention_images=2).read_text()
    assert 'class="warning"' in text and "one output dimension dominates" in text
    assert "omitted: CheckpointError" in text
    assert "Configuration" in text and "vit_tiny" in text


def test_load_run_and_plot_curves(tmp_path):
    run = load_run(make_run_dir(tmp_path / "run", None, epochs=4, checkpoint=False))
    assert len(run.epochs) == 4 and len(run.steps) == 8 and run.config["out_dim"] == OUT_DIM
    assert run.epoch_series("knn_top1") == ([0, 1, 2, 3], [20.0, 21.0, 22.0, 23.0])
    png = plot_curves({"loss": run.step_series("loss"), "none": ([0, 1], [None, None])},
                      tmp_path / "sub" / "loss.png", "loss", "step", hlines={"ref": 1.0}, vlines=[2])
    assert png.is_file() and Image.open(png).size[0] > 100
    assert plot_curves({}, tmp_path / "empty.png").is_file()


def test_noisy_curves_get_a_moving_mean(tmp_path):
    assert moving_average([1.0, 2.0, 3.0, 5.0], 2) == [1.0, 1.5, 2.5, 4.0]
    steps = list(range(0, 600, 10))
    noisy = [7.0 - s / 200 + (0.4 if i % 2 else -0.4) for i, s in enumerate(steps)]
    plain = plot_curves({"loss": (steps, noisy)}, tmp_path / "plain.png", xlabel="step")
    smooth = plot_curves({"loss": (steps, noisy)}, tmp_path / "smooth.png", xlabel="step", smooth=True)
    # The same axes, one more (bold) line and a legend: the pictures differ.
    assert Image.open(plain).size == Image.open(smooth).size
    assert Image.open(plain).tobytes() != Image.open(smooth).tobytes()
    assert moving_average(noisy, 6)[-1] == pytest.approx(sum(noisy[-6:]) / 6)
