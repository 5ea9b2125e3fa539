"""``dinokit export``: the backbone of a checkpoint as a file in the release's layout.

A training checkpoint holds student, teacher, optimiser and flags; the release files
(``dino_deitsmall16_pretrain.pth``) hold one backbone's state dict. ``export`` writes the latter
(``.pth``, or ``.safetensors`` by the file name), from any weights ``load_pretrained`` reads.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint's backbone as a release-style weights file",
                       description="Load a checkpoint's teacher (or --checkpoint_key student) backbone strictly "
                                   "and save its state dict alone, as the release's *_pretrain.pth files are: "
                                   "a fraction of a training checkpoint's size, loadable by dinokit, torch.hub "
                                   "and the release's own loaders.")
    p.add_argument("weights", help="a training checkpoint, release file, Hugging Face folder ...")
    p.add_argument("--output", required=True, help="output file: .pth (torch) or .safetensors")
    p.add_argument("--checkpoint_key", default="teacher", help="entry of a full checkpoint: teacher or student")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from ..errors import ConfigError
    from ..models import load_pretrained
    from ..outputs import output_file
    from ..train.checkpoint import save_atomic

    if Path(args.output).suffix not in (".pth", ".pt", ".bin", ".safetensors"):
        raise ConfigError(f"--output {args.output}: end the name with .pth (torch) or .safetensors, "
                          f"the two formats it can write")
    path = output_file(args.output)
    model = load_pretrained(args.weights, checkpoint_key=args.checkpoint_key)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        tmp = path.with_name(f".{path.name}.tmp")  # as save_atomic: never a half-written file
        save_file(sd, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
    else:
        save_atomic(sd, path)
    name = model.pretrained_cfg["arch"]
    size_mb = path.stat().st_size / 2**20
    print(f"{name} {args.checkpoint_key} backbone: {len(sd)} tensors, {size_mb:.1f} MB -> {path}")
    print(json.dumps({"command": "export", "output": str(path), "arch": name, "tensors": len(sd),
                      "megabytes": round(size_mb, 2), "image_size": model.pretrained_cfg["image_size"]}))
    return 0
