"""``dinokit train``: every ``main_dino.py`` flag, plus ``--config``, ``--preset`` and dinokit's own."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import get_type_hints

from ..errors import ConfigError

HELP = {
    "arch": "backbone: vit_tiny, vit_small, vit_base, resnet18, resnet34, resnet50 or resnet18_cifar (32 px)",
    "patch_size": "ViT patch size in pixels (8 or 16 in the paper; 4 for 32 px images)",
    "out_dim": "K, the number of prototypes of the DINO head",
    "norm_last_layer": "freeze the scale of the weight-normalised last layer (more stable)",
    "momentum_teacher": "base EMA momentum of the teacher, raised to --momentum_teacher_end by a cosine",
    "momentum_teacher_end": "the teacher's EMA momentum at the end of training (the paper: 1)",
    "warmup_teacher_temp": "teacher temperature at the start of its warm-up",
    "teacher_temp": "teacher temperature after warm-up",
    "use_fp16": "fp16 mixed precision on GPU (official flag); see also --precision",
    "clip_grad": "per-parameter gradient norm clip (0 disables)",
    "freeze_last_layer": "epochs during which the head's last layer is not updated",
    "lr": "learning rate at batch 256, scaled linearly with the total batch size",
    "global_crops_scale": "area range of the two global crops",
    "local_crops_number": "number of small local views",
    "local_crops_scale": "area range of the local crops",
    "data_path": "folder of images (any depth, class folders optional)",
    "pretrained_weights": "continue from these backbone weights (dino_vits16, a file ...) instead of random ones; "
                          "the heads start afresh",
    "precision": "auto (bf16 on CPU; fp16 with --use_fp16 on GPU), fp32, bf16 or fp16",
    "cache": "decode the dataset once into memory: auto (if it fits in a quarter of RAM), yes, no",
    "time_budget": "fit the whole schedule into this wall-clock time, e.g. 30m or 1h30m",
    "knn_every": "online k-NN of the teacher every N epochs (needs --knn_train_path, --knn_val_path)",
    "global_crops_size_start": "progressive resizing: the global crops grow from this size to "
                               "--global_crops_size over the run (0: off)",
    "canvas_size": "side of the decoded image canvas crops are taken from (0: auto)",
    "max_steps": "stop after this many iterations (0: no limit)",
    "centering": "teacher centering: center (DINO's EMA center) or sinkhorn_knopp (DINOv2)",
    "koleo_loss_weight": "weight of DINOv2's KoLeo term, which spreads the student's global-crop features",
}


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_flags(p: argparse.ArgumentParser, config_cls) -> None:
    """One flag per config field; defaults are None so only given flags override the config."""
    hints = get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        typ = hints[f.name]
        default = f.default
        help_text = HELP.get(f.name, "") + f" (default: {list(default) if isinstance(default, tuple) else default})"
        kw: dict = dict(default=None, help=help_text)
        if typ is bool:
            kw.update(type=_bool, metavar="BOOL")
        elif str(typ).startswith("tuple"):
            kw.update(type=float, nargs=2, metavar=("MIN", "MAX"))
        else:
            kw.update(type=typ)
        # torch.distributed.launch (the release's launcher) passes --local-rank=N since torch 2.0.
        aliases = ["--local-rank"] if f.name == "local_rank" else []
        p.add_argument(f"--{f.name}", *aliases, dest=f.name, **kw)


def register(sub) -> None:
    from ..train.config import PRESETS, TrainConfig
    p = sub.add_parser("train", help="train a DINO model on a folder of images",
                       description="Self-supervised DINO training. Flags and defaults follow the official "
                                   "main_dino.py; --preset and --config set many at once.")
    p.add_argument("--config", default=None, help="YAML file of flag: value pairs")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=run)
    p.epilog = f"presets: {', '.join(PRESETS)}"


def config_from_args(args: argparse.Namespace):
    from ..train.config import TrainConfig, load_config
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    preset = overrides.pop("preset", None)
    return load_config(overrides, config_file=args.config, preset=preset)


def run(args: argparse.Namespace) -> int:
    from ..train import train
    from ..train.trainer import TrainingInterrupted
    cfg = config_from_args(args)
    try:
        train(cfg)
    except TrainingInterrupted as e:
        print(f"dinokit train: {e}", file=sys.stderr)
        return 128 + e.signum  # the shell's convention for a process stopped by a signal
    return 0


__all__ = ["register", "run", "config_from_args", "add_config_flags", "ConfigError"]
