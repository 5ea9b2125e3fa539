"""``dinokit linear``: linear probe on frozen features (DINO's ``eval_linear.py``).

Fast by default: features of centre crops are extracted once and the linear layer trains on
them. ``--augment`` follows the release exactly: RandomResizedCrop + flip images go through the
backbone at every epoch. Writes ``linear.pth`` (classifier state dict) and ``log.txt`` (one JSON
line per epoch) to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

from .argtypes import positive_float, positive_int
from .extract import (add_backbone_args, add_bool, add_image_args, add_runtime_args, crop_size, embedding,
                      load_backbone)
from .knn import extract_folder, extract_pair, labelled_folders, load_feature_pair, split_folders

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("linear", help="linear probe accuracy of frozen features",
                       description="Train a linear classifier on frozen features with the DINO recipe (SGD, "
                                   "momentum 0.9, no weight decay, lr*batch/256, cosine schedule) and report "
                                   "top-1/top-5 on the validation images.")
    g = p.add_argument_group("data")
    g.add_argument("--data_path", help="folder with train/ and val/ (or test/) class sub-folders")
    g.add_argument("--train_path", help="training image folder (with --val_path)")
    g.add_argument("--val_path", help="validation image folder (with --train_path)")
    g.add_argument("--load_features", nargs="+", metavar="PATH",
                   help="train on saved features: a folder with train.pt/val.pt or two files TRAIN VAL")
    f = p.add_argument_group("features")
    f.add_argument("--n_last_blocks", type=positive_int, default=4,
                   help="concatenate the class tokens of the last n blocks (4 for ViT-S, 1 for ViT-B)")
    add_bool(f, "--avgpool_patchtokens", "concatenate the average-pooled patch tokens (ViT-B: true)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, default=100, help="training epochs of the linear classifier")
    t.add_argument("--lr", type=positive_float, default=0.001,
                   help="learning rate for a batch of 256 (scaled linearly)")
    t.add_argument("--val_freq", type=positive_int, default=1, help="validate every this many epochs")
    t.add_argument("--num_labels", type=positive_int, default=None, help="number of classes (default: from the data)")
    add_bool(t, "--augment", "official path: random-resized crops + flips through the backbone at every epoch")
    t.add_argument("--output_dir", default=".", help="where linear.pth and log.txt are written")
    t.add_argument("--evaluate", action="store_true",
                   help="only evaluate the classifier of --pretrained_linear (default: the release's for --arch)")
    t.add_argument("--pretrained_linear", help="a linear.pth or a release *_linearweights.pth file")
    add_backbone_args(p)
    add_runtime_args(p)
    add_image_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..eval.linear import LinearConfig, save_classifier
    from ..outputs import output_folder

    embed = embedding(args)
    if args.augment and args.load_features:
        raise ConfigError("--augment trains from images: it cannot use --load_features")
    start = time.perf_counter()
    if args.evaluate:
        return _evaluate(args, embed, start)
    config = LinearConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size_per_gpu,
                          val_freq=args.val_freq, seed=args.seed)
    out_dir = output_folder(args.output_dir)
    result, n_train, n_val = _train(args, embed, config, _EpochLog(out_dir / "log.txt"))
    if result is None:  # under torchrun, a process that helped extract: process 0 trains the probe
        return 0
    path = save_classifier(out_dir / "linear.pth", result, n_last_blocks=args.n_last_blocks,
                           avgpool_patchtokens=bool(args.avgpool_patchtokens))
    stats = {"top1": result.top1, "top5": result.top5, "best_top1": result.best_top1}
    _report(stats, {"command": "linear", "augment": args.augment, "train": n_train, "val": n_val,
                    "epochs": args.epochs, "classifier": str(path)}, start)
    return 0


def _release_linear(args) -> str:
    """Without --pretrained_linear, the release's ImageNet classifier of the release backbone that
    --arch / --patch_size name, as its eval_linear.py --evaluate does."""
    from ..errors import ConfigError
    from ..models.pretrained import LINEAR_URLS, cached_download, release_name

    name = None if args.pretrained_weights else release_name(args.arch, args.patch_size)
    if name is None:
        raise ConfigError("--evaluate needs --pretrained_linear FILE (the release's classifiers go with its "
                          "backbones: dino_vits16, dino_vits8, dino_vitb16, dino_vitb8, dino_resnet50)")
    log.info("no --pretrained_linear: the release's ImageNet classifier of %s", name)
    return str(cached_download(LINEAR_URLS[name]))


def _evaluate(args, embed, start: float) -> int:
    from ..errors import ConfigError
    from ..eval.features import align_classes
    from ..eval.linear import evaluate_classifier, load_classifier
    from ..train.distributed import is_main

    classifier = load_classifier(args.pretrained_linear or _release_linear(args))
    if args.load_features:
        val = load_feature_pair(args.load_features)[1]
    else:
        val = extract_folder(args, load_backbone(args), split_folders(args)[1], embed, "val")
    if not is_main():
        return 0
    val = align_classes(classifier.classes, val)  # a probe of dinokit knows its class names
    if val.dim != classifier.linear.in_features:
        raise ConfigError(f"the classifier takes {classifier.linear.in_features}-d features but these are "
                          f"{val.dim}-d: check --n_last_blocks / --avgpool_patchtokens")
    stats = evaluate_classifier(classifier, val.features, val.labels)
    _report(stats, {"command": "linear", "evaluate": True, "val": len(val)}, start)
    return 0


def _train(args, embed, config, on_epoch):
    from ..data import ImageList
    from ..eval.features import align_classes
    from ..eval.linear import train_linear, train_linear_augmented
    from ..runtime import resolve_device
    from ..train.distributed import is_main

    if not args.augment:
        train, val = load_feature_pair(args.load_features) if args.load_features else extract_pair(args, embed)
        if not is_main():
            return None, len(train), len(val)
        device = resolve_device(args.device)
        return train_linear(train, val, config, args.num_labels, device, on_epoch), len(train), len(val)
    train_dir, val_dir = labelled_folders(args)
    train_images = ImageList.from_folder(train_dir)
    model = load_backbone(args)
    val = align_classes(train_images.classes, extract_folder(args, model, val_dir, embed, "val"))
    result = train_linear_augmented(model, train_images, val, crop_size(args), config, embed, args.num_labels,
                                    args.num_workers, args.precision, on_epoch)
    return result, len(train_images), len(val)


class _EpochLog:
    """Writes each epoch's row as a JSON line (the file is created with the first row) and logs it."""

    def __init__(self, path: Path):
        self.path, self.started = path, False

    def __call__(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a" if self.started else "w") as f:
            f.write(json.dumps(row) + "\n")
        self.started = True
        if "val_top1" in row:
            log.info("epoch %d: train loss %.4f, val top-1 %.2f", row["epoch"], row["train_loss"], row["val_top1"])


def _report(stats: dict, info: dict, start: float) -> None:
    top5 = stats.get("top5", math.nan)
    shown = f"{top5:.2f}" if math.isfinite(top5) else "n/a (fewer than 5 classes)"
    print(f"Linear probe: Top1: {stats['top1']:.2f}, Top5: {shown}")
    info.update({k: (round(v, 4) if math.isfinite(v) else None) for k, v in stats.items() if k != "loss"})
    info["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(info))
