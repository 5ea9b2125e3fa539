"""``dinokit info WEIGHTS``: what a weights file holds and which network it fits."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a weights file (release name or local path)",
                       description="Load a checkpoint safely and print its architecture and contents; "
                                   "feature files and linear probes are recognised too.")
    p.add_argument("weights", help="release name (dino_vits16, ...) or a .pth / .safetensors file")
    p.add_argument("--checkpoint_key", default="teacher", help="entry of a full checkpoint (teacher/student)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models import load_pretrained
    from ..models.pretrained import _resolve, load_checkpoint_file
    from ..models.transformers_layout import is_transformers_vit

    if Path(args.weights).is_dir() and _describe_dump(Path(args.weights)):
        return 0
    path = _resolve(args.weights)
    ckpt = None if str(path).endswith(".npz") else load_checkpoint_file(path)
    if not isinstance(ckpt, dict) or "features" in ckpt:  # .npz, a dict of features, or a bare matrix
        return _describe_features(path)
    if "linear.weight" in ckpt.get("state_dict", ckpt) or "module.linear.weight" in ckpt.get("state_dict", {}):
        return _describe_classifier(path, ckpt)
    model = load_pretrained(args.weights, checkpoint_key=args.checkpoint_key)
    n_params = sum(p.numel() for p in model.parameters())
    if is_transformers_vit(ckpt):
        print("format       : Hugging Face transformers ViT (read in the release's layout)")
    elif all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        print(f"contents     : one backbone's state dict, {len(ckpt)} tensors (the release's layout)")
    else:
        print(f"file entries : {', '.join(sorted(map(str, ckpt)))[:200]}")
    if "epoch" in ckpt:
        print(f"epoch        : {ckpt['epoch']}")
    print(f"architecture : {model.pretrained_cfg['arch']}, {getattr(model, 'embed_dim', '?')}-d features")
    print(f"parameters   : {n_params / 1e6:.2f} M")
    training = _training_summary(ckpt.get("args"), ckpt.get("elapsed_s"))
    if training:
        print(f"trained      : {training}")
    return 0


def _describe_dump(folder: Path) -> bool:
    """Describe a ``knn --dump_features`` folder (dinokit's or the release's files); False if it is not one."""
    from ..eval.features import load_features, load_official_dump

    if (folder / "trainfeat.pth").is_file() and (folder / "testfeat.pth").is_file():
        pairs = zip(("trainfeat.pth", "testfeat.pth"), load_official_dump(folder))
        source = "--dump_features in the layout of the release's eval_knn.py"
    elif (folder / "train.pt").is_file() and (folder / "val.pt").is_file():
        pairs = ((name, load_features(folder / name)) for name in ("train.pt", "val.pt"))
        source = "dinokit knn --dump_features"
    else:
        return False
    print(f"folder of features from {source}; use with knn/linear --load_features {folder}")
    for name, feats in pairs:
        _print_features(feats, name)
    return True


def _training_summary(flags, elapsed_s) -> str:
    """Preset, data, crops and time of a training checkpoint's flags (dinokit's dict or the
    release's Namespace); empty for backbone-only files."""
    flags = vars(flags) if isinstance(flags, argparse.Namespace) else flags
    if not isinstance(flags, dict):
        return ""
    parts = [f"preset {flags['preset']}"] if flags.get("preset") else []
    if flags.get("data_path"):
        parts.append(f"on {flags['data_path']}")
    size, n_local = flags.get("global_crops_size"), flags.get("local_crops_number")
    if size:
        local = f" + {n_local} x {flags.get('local_crops_size', 96)} px" if n_local else ""
        parts.append(f"crops 2 x {size} px{local}")
    if flags.get("time_budget"):
        parts.append(f"time budget {flags['time_budget']}")
    elif flags.get("epochs"):
        parts.append(f"{flags['epochs']} epochs")
    if isinstance(elapsed_s, (int, float)):
        parts.append(f"{elapsed_s / 60:.1f} min of training")
    return ", ".join(parts)


def _describe_features(path) -> int:
    """A file of ``dinokit extract`` (or ``knn --dump_features``): rows, width and classes."""
    from ..eval.features import load_features

    print("features from dinokit extract; use with knn/linear --load_features")
    _print_features(load_features(path), "features")
    return 0


def _print_features(feats, label: str) -> None:
    names = [c for c in feats.classes if c]
    n_labels = len(feats.labels.unique())
    classes = (f"{len(names)} classes ({', '.join(names[:10])}{' ...' if len(names) > 10 else ''})" if names
               else f"{n_labels} distinct labels" if n_labels > 1 else "unlabelled")
    print(f"{label:13s}: {len(feats)} rows x {feats.dim}, {classes}")


def _describe_classifier(path, ckpt: dict) -> int:
    """A linear probe of ``dinokit linear`` or the release's ``*_linearweights.pth``."""
    from ..eval.linear import load_classifier

    classifier = load_classifier(path)
    print(f"linear probe : {classifier.linear.in_features}-d features to {classifier.num_labels} classes; "
          f"use with linear --evaluate --pretrained_linear")
    if classifier.classes:
        shown = classifier.classes[:10]
        print(f"classes      : {', '.join(shown)}{' ...' if len(classifier.classes) > 10 else ''}")
    if isinstance(ckpt.get("top1"), float):
        print(f"val top-1    : {ckpt['top1']:.2f}")
    return 0
