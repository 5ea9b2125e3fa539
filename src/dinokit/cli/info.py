"""``dinokit info WEIGHTS``: what a weights file holds and which network it fits."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a weights file (release name or local path)",
                       description="Load a checkpoint safely and print its architecture and contents.")
    p.add_argument("weights", help="release name (dino_vits16, ...) or a .pth / .safetensors file")
    p.add_argument("--checkpoint_key", default="teacher", help="entry of a full checkpoint (teacher/student)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import load_pretrained
    from ..models.pretrained import _resolve, load_checkpoint_file

    ckpt = load_checkpoint_file(_resolve(args.weights))
    model = load_pretrained(args.weights, checkpoint_key=args.checkpoint_key)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"file entries : {', '.join(sorted(map(str, ckpt)))[:200]}")
    if "epoch" in ckpt:
        print(f"epoch        : {ckpt['epoch']}")
    print(f"architecture : {type(model).__name__} "
          f"{getattr(model, 'embed_dim', '')}-d, patch {getattr(model, 'patch_size', '-')}")
    print(f"parameters   : {n_params / 1e6:.2f} M")
    return 0
