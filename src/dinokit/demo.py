"""The demo: train ViT-tiny/8 on a small CIFAR-10 folder for a few minutes, then show what it
learned: k-NN accuracy beside raw pixels and a random network, a loss curve, attention maps."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .data import EvalTransform
from .errors import DataError
from .eval.features import Embedding, extract_features
from .eval.knn import knn_classify
from .models import build_backbone, load_pretrained
from .train import load_config, train
from .train.online_knn import decode_pair

__all__ = ["run_demo", "demo_data", "knn_baselines", "knn_table"]

log = logging.getLogger("dinokit.demo")


def knn_table(nets: dict[str, torch.nn.Module], train_dir: str, test_dir: str, image_size: int,
              embeddings: dict[str, Embedding] | None = None, k: int = 20) -> dict[str, float]:
    """Weighted k-NN top-1 (T=0.07, percent) of raw pixels and of each network's features.

    ``embeddings`` (``{tag: Embedding}``, default the class token) name the results
    ``"net/tag"``; with the default they are named after the networks alone."""
    transform = EvalTransform(resize=image_size, crop=image_size)
    train_x, train_y, test_x, test_y = decode_pair(train_dir, test_dir, transform)

    def top1(train_f, test_f):
        return round(knn_classify(train_f, train_y, test_f, test_y, k=k)["top1"], 2)

    out = {"raw_pixels": top1(train_x.flatten(1), test_x.flatten(1))}
    for name, net in nets.items():
        for tag, embed in (embeddings or {"": Embedding()}).items():
            train_f, test_f = (extract_features(net, x, embed).features for x in (train_x, test_x))
            out[f"{name}/{tag}" if tag else name] = top1(train_f, test_f)
    return out


def knn_baselines(teacher: torch.nn.Module, train_dir: str, test_dir: str, image_size: int, seed: int = 0,
                  k: int = 20, arch: str = "vit_tiny") -> dict[str, float]:
    """k-NN top-1 of the trained teacher, raw pixels and a random network of the same shape."""
    torch.manual_seed(seed)
    random_net = build_backbone(arch, getattr(teacher, "patch_size", 16), img_size=image_size)
    r = knn_table({"dino": teacher, "random_init": random_net}, train_dir, test_dir, image_size, k=k)
    return {"dino": r["dino"], "raw_pixels": r["raw_pixels"], "random_init": r["random_init"]}


def demo_data(root: Path) -> Path:
    """``root``, or the clone's bundled subset when the default relative path is run from elsewhere."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    bundled = Path(__file__).resolve().parents[2] / "data" / "cifar10-demo"  # src/dinokit/demo.py -> clone
    if root == Path("data/cifar10-demo") and (bundled / "train").is_dir():
        return bundled
    raise DataError(f"no demo images at {root}/train and {root}/test: the CIFAR-10 subset ships with the "
                    f"repository (run `make demo` in a clone), or pass --data_root DIR with train/ and test/ "
                    f"class folders")


def run_demo(output_dir: str = "demo_output", data_root: str = "data/cifar10-demo", minutes: float = 5.0,
             seed: int = 0) -> dict:
    """Train, evaluate and draw; returns the summary that the command prints as its last line."""
    root, out = demo_data(Path(data_root)), Path(output_dir)
    cfg = load_config({"data_path": str(root / "train"), "output_dir": str(out), "seed": seed,
                       "time_budget": f"{minutes * 60:.0f}s", "knn_every": 1,
                       "knn_train_path": str(root / "train"), "knn_val_path": str(root / "test")}, preset="demo")
    if (out / "checkpoint.pth").is_file():  # a second `make demo` goes on from the first
        log.info("%s holds an earlier demo run: resuming it (remove the folder to train afresh)", out)
    train_minutes = train(cfg)["elapsed_s"] / 60  # all sessions of the run
    teacher = load_pretrained(out / "checkpoint.pth")
    knn = knn_baselines(teacher, str(root / "train"), str(root / "test"), cfg.knn_image_size, seed,
                        arch=cfg.arch)
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
                        xlabel="iteration", ylabel="loss", smooth=True)
    images = [sorted(d.glob("*.jpg"))[0] for d in sorted((root / "test").iterdir()) if d.is_dir()]
    visualize_images(teacher, images, out / "attention", root=root / "test", image_size=(128, 128), threshold=0.6)
    return [curve, out / "attention", out / "report.html"]
