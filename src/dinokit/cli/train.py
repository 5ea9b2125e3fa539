"""``dinokit train``: every ``main_dino.py`` flag, plus ``--config``, ``--preset`` and dinokit's own."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import get_args, get_origin, get_type_hints

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
    "precision": "auto (bf16 on a CPU with bf16 units, else fp32; fp16 with --use_fp16 on GPU), fp32, bf16 or fp16",
    "cache": "decode the dataset once into memory: auto (if it fits in a quarter of RAM), yes, no",
    "time_budget": "fit the whole schedule into this wall-clock time, e.g. 30m or 1h30m (0: none, --epochs rules)",
    "knn_every": "online k-NN of the teacher every N epochs, at --canvas_size if set (under 128), else "
                 "--global_crops_size (needs --knn_train_path, --knn_val_path)",
    "global_crops_size_start": "progressive resizing: the global crops grow from this size to "
                               "--global_crops_size over the run (0: off)",
    "global_crops_scale_start": "crop curriculum: the global crops' least area starts at this and moves linearly "
                                "to the min of --global_crops_scale over the run (0: off)",
    "canvas_size": "side of the decoded image canvas crops are taken from (0: auto)",
    "max_steps": "stop after this many iterations (0: no limit)",
    "centering": "teacher centering: center (DINO's EMA center) or sinkhorn_knopp (DINOv2)",
    "koleo_loss_weight": "weight of DINOv2's KoLeo term, which spreads the student's global-crop features",
    "use_bn_in_head": "batch norm between the head's MLP layers (the demo presets use it)",
    "warmup_teacher_temp_epochs": "epochs of linear teacher temperature warm-up",
    "weight_decay": "weight decay at the start (cosine to --weight_decay_end; none on biases and norms)",
    "weight_decay_end": "weight decay at the end of training",
    "batch_size_per_gpu": "images per process and step (the total batch scales --lr)",
    "epochs": "length of the schedules (with --time_budget, they are fitted to the time instead)",
    "warmup_epochs": "epochs of linear learning-rate warm-up",
    "min_lr": "learning rate at the end of the cosine decay",
    "optimizer": "adamw, sgd or lars",
    "drop_path_rate": "stochastic depth rate of the student's ViT blocks",
    "output_dir": "where checkpoints, logs and pictures go; a run there resumes automatically",
    "saveckp_freq": "also keep checkpoint{epoch:04}.pth every N epochs (0: never)",
    "seed": "random seed of weights, data order and augmentations",
    "num_workers": "image decoding processes when not cached in memory (capped at the CPUs available)",
    "dist_url": "process-group init method (env:// under torchrun / SLURM)",
    "local_rank": "set by torch.distributed.launch (LOCAL_RANK is read first)",
    "global_crops_size": "side of the two global crops in pixels",
    "local_crops_size": "side of the local crops in pixels",
    "center_momentum": "EMA momentum of the teacher center (1.0: no centering)",
    "head_hidden_dim": "width of the head's hidden layers",
    "head_bottleneck_dim": "width before the L2 normalisation and the last layer",
    "head_nlayers": "layers of the head's MLP",
    "blur_sigma": "range of the Gaussian blur's sigma in pixels",
    "color_jitter": "scale of the colour jitter strengths (0.4, 0.4, 0.2, 0.1)",
    "p_color_jitter": "probability of colour jitter",
    "p_grayscale": "probability of grayscale",
    "p_solarize": "probability of solarisation of the second global crop",
    "p_blur": "probabilities of Gaussian blur: first global, second global, local crops",
    "knn_train_path": "labelled class folders for the online k-NN's neighbours",
    "knn_val_path": "labelled class folders the online k-NN classifies",
    "knn_k": "neighbours of the online k-NN",
    "log_every": "iterations between rows of metrics.jsonl",
    "compile": "torch.compile the student and the teacher (the first steps compile; 13%% more images/s "
               "for cifar_resnet on a CPU; a network that fails to compile runs eagerly)",
    "device": "auto (CUDA if available), cpu, cuda, cuda:1 ...",
    "dist_timeout_s": "seconds before the other processes give up on a dead one",
    "report": "write report.html (loss curves, diagnostics) at the end",
    "preset": "named recipe whose values the other flags override",
}

PRESET_HELP = {
    "vits16": "the paper's ViT-S/16 recipe: 2 x 224 + 10 x 96 px crops, 100 epochs",
    "cifar": "ViT-tiny/4 for 32 px images: 2 x 32 + 6 x 16 px crops, the paper's head",
    "demo": "ViT-tiny/8, 32 px crops, 5 minutes on a few thousand small images (make demo)",
    "cifar_resnet": "the demo's recipe on resnet18_cifar, 24 px crops, crop curriculum, batch 64, teacher "
                    "temperature 0.04 to 0.07, compiled: the best k-NN per CPU hour with AMX",
    "cifar_resnet16": "cifar_resnet with 16 px crops and the teacher momentum held at 0.98: the best k-NN "
                      "per CPU hour without AMX (evaluate at 24 px)",
}

# How --help groups the flags: the release's sections, then dinokit's own.
GROUPS = {
    "model": ("arch", "patch_size", "out_dim", "norm_last_layer", "momentum_teacher", "momentum_teacher_end",
              "use_bn_in_head", "head_hidden_dim", "head_bottleneck_dim", "head_nlayers", "pretrained_weights"),
    "temperature and centering": ("warmup_teacher_temp", "teacher_temp", "warmup_teacher_temp_epochs",
                                  "center_momentum", "centering", "koleo_loss_weight"),
    "optimisation": ("use_fp16", "precision", "weight_decay", "weight_decay_end", "clip_grad", "batch_size_per_gpu",
                     "epochs", "time_budget", "freeze_last_layer", "lr", "warmup_epochs", "min_lr", "optimizer",
                     "drop_path_rate", "max_steps", "compile"),
    "multi-crop and augmentation": ("global_crops_scale", "local_crops_number", "local_crops_scale",
                                    "global_crops_size", "local_crops_size", "global_crops_size_start",
                                    "global_crops_scale_start", "blur_sigma", "color_jitter", "p_color_jitter",
                                    "p_grayscale", "p_solarize", "p_blur"),
    "data and output": ("data_path", "output_dir", "saveckp_freq", "seed", "num_workers", "canvas_size", "cache",
                        "log_every", "report", "knn_every", "knn_train_path", "knn_val_path", "knn_k"),
    "processes and device": ("device", "dist_url", "local_rank", "dist_timeout_s"),
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
    made = {title: p.add_argument_group(title) for title in GROUPS}
    groups = {name: made[title] for title, names in GROUPS.items() for name in names}
    for f in dataclasses.fields(config_cls):
        typ = hints[f.name]
        default = f.default
        shown = list(default) if isinstance(default, tuple) else default if default != "" else "none"
        help_text = HELP.get(f.name, "") + f" (default: {shown})"
        kw: dict = dict(default=None, help=help_text)
        if typ is bool:
            kw.update(type=_bool, metavar="BOOL")
        elif get_origin(typ) is tuple:
            n = len(get_args(typ))
            kw.update(type=float, nargs=n, metavar=("MIN", "MAX") if n == 2 else "P")
        else:
            kw.update(type=typ)
        # torch.distributed.launch (the release's launcher) passes --local-rank=N since torch 2.0.
        aliases = ["--local-rank"] if f.name == "local_rank" else []
        groups.get(f.name, p).add_argument(f"--{f.name}", *aliases, dest=f.name, **kw)


def register(sub) -> None:
    from ..train.config import PRESETS, TrainConfig
    p = sub.add_parser("train", help="train a DINO model on a folder of images",
                       description="Self-supervised DINO training. Flags and defaults follow the official\n"
                                   "main_dino.py; --preset and --config set many at once.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file of flag: value pairs")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=run)
    width = max(map(len, PRESETS))
    p.epilog = "presets (--preset NAME):\n" + "\n".join(f"  {name:{width}s} {PRESET_HELP.get(name, '')}"
                                                         for name in PRESETS)


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
