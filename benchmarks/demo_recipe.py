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

from dinokit.demo import knn_table
from dinokit.eval.features import Embedding
from dinokit.models import build_backbone, load_pretrained
from dinokit.train import load_config, train


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
            "random": build_backbone(cfg.arch, cfg.patch_size, img_size=cfg.knn_image_size).eval()}
    result = {"set": overrides, "minutes": round(minutes, 2), "knn_top1": knn_table(
        nets, str(root / "train"), str(root / "test"), cfg.knn_image_size,
        embeddings={"cls": Embedding(), "cls+avg": Embedding(1, True)})}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
