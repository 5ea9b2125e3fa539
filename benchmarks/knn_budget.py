"""k-NN accuracy after a wall-clock budget of training on the full CIFAR-10.

    python benchmarks/knn_budget.py --minutes 60

Trains a CIFAR-size recipe on the 50,000 CIFAR-10 training JPEGs with ``--time_budget``, then
reports the weighted k-NN top-1 (k=20, T=0.07) of the teacher on the 10,000 test images, beside
raw pixels. Prints one JSON object last.

The default is the demo's recipe (ViT-tiny/8, batch-norm head, out_dim 1024), the one measured to
learn within minutes on 2 CPU cores; ``--preset cifar_resnet`` runs the same recipe on
``resnet18_cifar`` with 24 px global crops, which learns faster for the same CPU time;
``--preset cifar_resnet16 --eval_size 24`` is its variant for CPUs without AMX (16 px crops).
``--preset cifar`` (ViT-tiny/4, the paper's head and learning rate at 32 px) costs 3.5x more a
step, and the paper's recipe learns slowly at first: the official code after one CIFAR-10 epoch
(27 CPU minutes) is at a random network's k-NN accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from dinokit.data import EvalTransform  # noqa: E402
from dinokit.errors import DinokitError  # noqa: E402
from dinokit.eval.features import extract_features  # noqa: E402
from dinokit.eval.knn import knn_classify  # noqa: E402
from dinokit.models import load_pretrained  # noqa: E402
from dinokit.train import load_config, train  # noqa: E402
from dinokit.train.online_knn import decode_pair  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10"))
    ap.add_argument("--output_dir", default="runs/knn_budget")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config values")
    ap.add_argument("--eval_size", type=int, default=None,
                    help="image size for k-NN (default: the preset's canvas size, else its global crop size)")
    args = ap.parse_args()
    data = Path(args.data)
    extra = dict(kv.split("=", 1) for kv in args.set)
    cfg = load_config({"data_path": str(data / "train"), "output_dir": args.output_dir, "report": True,
                       "time_budget": f"{args.minutes * 60:.0f}s", **extra}, preset=args.preset)
    t0 = time.time()
    train(cfg)
    minutes = (time.time() - t0) / 60
    size = args.eval_size or cfg.knn_image_size
    transform = EvalTransform(resize=size, crop=size)
    train_x, train_y, test_x, test_y = decode_pair(str(data / "train"), str(data / "test"), transform)
    model = load_pretrained(Path(args.output_dir) / "checkpoint.pth")
    dino = knn_classify(extract_features(model, train_x).features, train_y,
                        extract_features(model, test_x).features, test_y, k=20, T=0.07)
    raw = knn_classify(train_x.flatten(1), train_y, test_x.flatten(1), test_y, k=20, T=0.07)
    result = {"knn_top1": round(dino["top1"], 2), "knn_top5": round(dino["top5"], 2),
              "raw_pixels_top1": round(raw["top1"], 2), "train_minutes": round(minutes, 1),
              "train_images": len(train_y), "test_images": len(test_y), "eval_size": size,
              "preset": args.preset, **extra}
    print(f"k-NN top-1 (k=20, T=0.07) after {minutes:.1f} min: {dino['top1']:.2f}% "
          f"(raw pixels {raw['top1']:.2f}%)")
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except DinokitError as e:  # a bad --set, a missing folder, a stop by signal: one line, no traceback
        sys.exit(f"knn_budget: {e}")
