"""``dinokit extract``: features of an image folder through a frozen backbone, saved as .pt or .npz.

Also home of the flags every evaluation command shares (backbone, device and precision, image
size) and of turning them into a model, so that all commands read them the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from .argtypes import arch_flag, bool_flag, natural_int, positive_int

log = logging.getLogger(__name__)

def add_bool(p: argparse.ArgumentParser, name: str, help: str, default: bool = False) -> None:
    """``--name`` alone means true; ``--name false`` / ``--name True`` are accepted too."""
    p.add_argument(name, nargs="?", const=True, default=default, type=bool_flag, metavar="BOOL", help=help)


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--pretrained_weights", default="",
                   help="checkpoint to evaluate: a release name (dino_vits16 ...) or a .pth/.safetensors file "
                        "(full training checkpoints too). Empty: the DINO release for --arch/--patch_size")
    g.add_argument("--arch", default=None, type=arch_flag,
                   choices=["vit_tiny", "vit_small", "vit_base", "resnet18", "resnet34", "resnet50", "resnet18_cifar"],
                   help="architecture (default: read off the weights; vit_small without weights)")
    g.add_argument("--patch_size", type=positive_int, default=None,
                   help="ViT patch size (default: from the weights, else 16)")
    g.add_argument("--checkpoint_key", default="teacher", help="entry of a full checkpoint: teacher or student")
    g.add_argument("--random_init", action="store_true", help="evaluate randomly initialised weights (a baseline)")
    g.add_argument("--seed", type=int, default=0, help="random seed (random weights, shuffling)")


def add_runtime_args(p: argparse.ArgumentParser, batch_size: int | None = 128) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast or fp32 (auto: bf16 on a CPU with bf16 units, fp32 elsewhere)")
    if batch_size is not None:
        g.add_argument("--batch_size_per_gpu", type=positive_int, default=batch_size, help="images per forward pass")
        g.add_argument("--num_workers", type=natural_int, default=2,
                       help="image decoding processes (0: in the main one)")
    g.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    # The release's evaluation scripts take these; torch.distributed.launch passes --local-rank.
    g.add_argument("--dist_url", default="env://", help="process-group init method under a launcher")
    g.add_argument("--local_rank", "--local-rank", type=int, default=0, dest="local_rank",
                   help="set by torch.distributed.launch (LOCAL_RANK is read first)")


def add_image_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preprocessing")
    g.add_argument("--resize", type=positive_int, default=None,
                   help="shorter side before cropping (bicubic); default 256, or the training size of a "
                        "dinokit run on small images (32 for CIFAR)")
    g.add_argument("--crop", type=positive_int, default=None, help="centre crop size; default 224, or as --resize")
    g.add_argument("--image_size", type=positive_int, default=None,
                   help="shortcut setting --resize and --crop to the same value (32 for CIFAR)")


def image_sizes(args: argparse.Namespace) -> tuple[int, int]:
    """``(resize, crop)`` of the flags: ``--image_size`` for both, else 256 / 224 unless given."""
    return (args.image_size, args.image_size) if args.image_size else (args.resize or 256, args.crop or 224)


def image_transform(args: argparse.Namespace):
    from ..data import EvalTransform

    return EvalTransform(*image_sizes(args))


def crop_size(args: argparse.Namespace) -> int:
    return image_sizes(args)[1]


def progress(args: argparse.Namespace):
    """A factory ``desc -> progress(done, total)`` for the library, or None with ``--quiet``."""
    from ..progress import ProgressBar
    from ..train.distributed import is_main

    return None if getattr(args, "quiet", False) or not is_main() else ProgressBar  # one bar under torchrun


def embedding(args: argparse.Namespace):
    """The ``Embedding`` that ``--n_last_blocks`` and ``--avgpool_patchtokens`` ask for."""
    from ..eval.features import Embedding

    return Embedding(args.n_last_blocks, args.avgpool_patchtokens)


def load_backbone(args: argparse.Namespace):
    """The frozen backbone the flags describe, on ``--device``, in eval mode."""
    import torch

    from ..errors import ConfigError
    from ..runtime import resolve_device
    from ..eval.features import check_image_size
    from ..models import build_backbone, load_pretrained
    from ..models.pretrained import release_name

    device = resolve_device(args.device)
    if args.random_init:
        torch.manual_seed(args.seed)
        model = build_backbone(args.arch or "vit_small", args.patch_size or 16)
        source = f"random {args.arch or 'vit_small'}"
    else:
        source = args.pretrained_weights
        if not source:
            arch, patch = args.arch or "vit_small", args.patch_size or 16
            source = release_name(args.arch, args.patch_size)
            if source is None:
                raise ConfigError(f"DINO released no {arch}/{patch} weights: pass --pretrained_weights FILE "
                                  f"or --random_init")
            log.info("no --pretrained_weights given: using the DINO release %s", source)
        model = load_pretrained(source, arch=args.arch, patch_size=args.patch_size,
                                checkpoint_key=args.checkpoint_key)
    _default_image_size(args, getattr(model, "pretrained_cfg", {}).get("image_size"))
    if hasattr(args, "resize"):  # the commands with --image_size / --resize / --crop
        check_image_size(model, image_sizes(args)[1], "--crop" if args.crop else "--image_size")
    if not hasattr(model, "get_intermediate_layers") and (getattr(args, "n_last_blocks", 1) > 1
                                                          or getattr(args, "avgpool_patchtokens", False)):
        log.info("a ResNet gives its pooled feature: --n_last_blocks and --avgpool_patchtokens apply to ViTs only")
    for p in model.parameters():
        p.requires_grad_(False)
    log.info("backbone %s (%s, %d-d) on %s", source, type(model).__name__,
             getattr(model, "embed_dim", 0), device)
    return model.to(device).eval()


def _default_image_size(args: argparse.Namespace, trained_at: int | None) -> None:
    """Without size flags, a dinokit run on small images is evaluated at its training size: 224 px
    would upscale 32 px images 7x, cost ~50x the compute and change the features."""
    if not hasattr(args, "resize") or trained_at is None or args.image_size or args.resize or args.crop:
        return
    args.image_size = trained_at
    log.info("images at %d px, the size the checkpoint was trained at (--image_size or --resize/--crop "
             "to change)", trained_at)


def register(sub) -> None:
    p = sub.add_parser("extract", help="extract features of an image folder to a .pt / .npz file",
                       description="Run a frozen backbone over every image below --data_path and save one "
                                   "feature row per image with its label and path.")
    p.add_argument("--data_path", required=True, help="image folder (class sub-folders give labels)")
    p.add_argument("--output", required=True, help="output file: .pt (torch) or .npz (numpy)")
    p.add_argument("--n_last_blocks", type=positive_int, default=1,
                   help="concatenate the class tokens of the last n blocks")
    add_bool(p, "--avgpool_patchtokens", "also concatenate the average-pooled patch tokens of the last block")
    add_backbone_args(p)
    add_runtime_args(p)
    add_image_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.features import extract_features
    from ..outputs import output_file
    from ..train.distributed import is_main

    embed = embedding(args)
    start = time.perf_counter()
    output_file(args.output)
    model = load_backbone(args)
    bar = progress(args)
    feats = extract_features(model, args.data_path, embed,
                             image_transform(args), batch_size=args.batch_size_per_gpu, num_workers=args.num_workers,
                             precision=args.precision, progress=bar("extract") if bar else None,
                             distributed=True)
    if not is_main():  # under torchrun the others helped; process 0 writes the file
        return 0
    path = feats.save(args.output)
    print(f"{len(feats)} images -> {feats.dim}-d features in {path} ({len(feats.skipped)} skipped)")
    print(json.dumps({"command": "extract", "output": str(path), "images": len(feats), "dim": feats.dim,
                      "classes": len(feats.classes), "skipped": len(feats.skipped),
                      "seconds": round(time.perf_counter() - start, 2)}))
    return 0
