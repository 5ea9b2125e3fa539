"""The demo: train ViT-tiny/8 on a small CIFAR-10 folder for a few minutes, then show what it
learned: k-NN accuracy beside raw pixels and a random network, a loss curve, attention maps."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from .data import EvalTransform
from .eval.features import extract_features
from .eval.knn import knn_classify
from .models import build_backbone, load_pretrained
from .train import load_config, train
from .train.online_knn import decode_folder

__all__ = ["run_demo", "knn_baselines"]

log = logging.getLogger("dinokit.demo")


def knn_baselines(teacher: torch.nn.Module, train_dir: str, test_dir: str, image_size: int, seed: int = 0,
                  k: int = 20) -> dict[str, float]:
    """Weighted k-NN top-1 (k=20, T=0.07) of the trained teacher, raw pixels and a random network."""
    transform = EvalTransform(resize=image_size, crop=image_size)
    train_x, train_y = decode_folder(train_dir, transform)
    test_x, test_y = decode_folder(test_dir, transform)
    torch.manual_seed(seed)
    random_net = build_backbone("vit_tiny", teacher.patch_size, img_size=image_size)

    def top1(train_f, test_f):
        return round(knn_classify(train_f, train_y, test_f, test_y, k=k)["top1"], 2)

    return {
        "dino": top1(extract_features(teacher, train_x).features, extract_features(teacher, test_x).features),
        "raw_pixels": top1(train_x.flatten(1), test_x.flatten(1)),
        "random_init": top1(extract_features(random_net, train_x).features,
                            extract_features(random_net, test_x).features),
    }


def run_demo(output_dir: str = "demo_output", data_root: str = "data/cifar10-demo", minutes: float = 5.0,
             seed: int = 0) -> dict:
    """Train, evaluate and draw; returns the summary that the command prints as its last line."""
    root, out = Path(data_root), Path(output_dir)
    cfg = load_config({"data_path": str(root / "train"), "output_dir": str(out), "seed": seed,
                       "time_budget": f"{minutes * 60:.0f}s", "knn_every": 1,
                       "knn_train_path": str(root / "train"), "knn_val_path": str(root / "test")}, preset="demo")
    t0 = time.monotonic()
    train(cfg)
    train_minutes = (time.monotonic() - t0) / 60
    teacher = load_pretrained(out / "checkpoint.pth")
    knn = knn_baselines(teacher, str(root / "train"), str(root / "test"), cfg.global_crops_size, seed)
    pictures = _pictures(teacher, root, out)
    n_images = sum(1 for _ in (root / "train").rglob("*.jpg"))
    summary = {"knn_top1": knn, "minutes": round(train_minutes, 2), "images": n_images,
               "pictures": [str(p) for p in pictures]}
    (out / "demo_result.json").write_text(json.dumps(summary, indent=1))
    return summary


def _pictures(teacher, root: Path, out: Path) -> list[Path]:
    """Loss curve and attention maps of one test image per class."""
    from .viz.attention import visualize_images
    from .viz.plots import plot_curves

    steps, losses = [], []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        steps.append(row["step"])
        losses.append(row["loss"])
    curve = plot_curves({"DINO loss": (steps, losses)}, out / "loss_curve.png", title="training loss",
                        xlabel="iteration", ylabel="loss")
    images = [sorted(d.glob("*.jpg"))[0] for d in sorted((root / "test").iterdir()) if d.is_dir()]
    visualize_images(teacher, images, out / "attention", root=root / "test", image_size=(128, 128), threshold=0.6)
    return [curve, out / "attention", out / "report.html"]
