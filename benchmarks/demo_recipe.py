"""Measure one demo recipe: train the ``demo`` preset (plus overrides) for a few minutes on the
bundled CIFAR-10 subset, then print weighted k-NN top-1 of teacher and student, CLS and CLS+avgpool,
beside a random network of the same shape. This is how the demo preset was chosen.

    python benchmarks/demo_recipe.py --minutes 5 --set '{"lr": 0.001, "momentum_teacher": 0.99}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dinokit.data import EvalTransform
from dinokit.eval.features import Embedding, extract_features
from dinokit.eval.knn import knn_classify
from dinokit.models import build_backbone, load_pretrained
from dinokit.train import load_config, train
from dinokit.train.online_knn import decode_folder


def knn_table(nets: dict[str, torch.nn.Module], root: Path, size: int) -> dict[str, float]:
    transform = EvalTransform(resize=size, crop=size)
    train_x, train_y = decode_folder(str(root / "train"), transform)
    test_x, test_y = decode_folder(str(root / "test"), transform)
    out = {"raw_pixels": knn_classify(train_x.flatten(1), train_y, test_x.flatten(1), test_y, k=20)["top1"]}
    for name, net in nets.items():
        for tag, embed in (("cls", Embedding()), ("cls+avg", Embedding(1, True))):
            a = extract_features(net, train_x, embed).features
            b = extract_features(net, test_x, embed).features
            out[f"{name}/{tag}"] = knn_classify(a, train_y, b, test_y, k=20)["top1"]
    return {k: round(v, 2) for k, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="/tmp/demo_recipe")
    p.add_argument("--data_root", default="data/cifar10-demo")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--preset", default="demo")
    p.add_argument("--set", default="{}", help="JSON object of TrainConfig overrides")
    args = p.parse_args(argv)
    root = Path(args.data_root)
    overrides = json.loads(args.set)
    cfg = load_config({"data_path": str(root / "train"), "output_dir": args.output_dir, "report": False,
                       "time_budget": f"{args.minutes * 60:.0f}s", **overrides}, preset=args.preset)
    t0 = time.monotonic()
    train(cfg)
    minutes = (time.monotonic() - t0) / 60
    ckpt = Path(args.output_dir) / "checkpoint.pth"
    torch.manual_seed(cfg.seed)
    nets = {"teacher": load_pretrained(ckpt), "student": load_pretrained(ckpt, checkpoint_key="student"),
            "random": build_backbone(cfg.arch, cfg.patch_size, img_size=cfg.global_crops_size).eval()}
    result = {"set": overrides, "minutes": round(minutes, 2), "knn_top1": knn_table(nets, root, cfg.global_crops_size)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
