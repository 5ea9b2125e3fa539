"""``dinokit demo``: train on the bundled CIFAR-10 subset for a few minutes, evaluate, draw."""

from __future__ import annotations

import argparse
import json

from .argtypes import positive_float


def register(sub) -> None:
    p = sub.add_parser("demo", help="train briefly on bundled CIFAR-10 images, then evaluate and draw",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output_dir", default="demo_output",
                   help="checkpoint, logs and pictures (an earlier demo there is resumed)")
    p.add_argument("--data_root", default="data/cifar10-demo", help="folder with train/ and test/ class folders")
    p.add_argument("--minutes", type=positive_float, default=5.0, help="training time budget")
    p.add_argument("--seed", type=int, default=0, help="random seed of training and of the random-init baseline")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..demo import demo_data, run_demo
    root = demo_data(Path(args.data_root))
    summary = run_demo(args.output_dir, str(root), args.minutes, args.seed)
    knn = summary["knn_top1"]
    print(f"\nk-NN top-1 on {root}/test (k=20, T=0.07): DINO teacher {knn['dino']:.1f}%  "
          f"raw pixels {knn['raw_pixels']:.1f}%  random init {knn['random_init']:.1f}%")
    print(f"pictures: {', '.join(summary.pop('pictures'))}")
    print(json.dumps(summary))
    return 0
