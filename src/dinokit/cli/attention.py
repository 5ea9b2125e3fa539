"""``dinokit attention``: class-token self-attention maps of an image or a folder of images.

Flags follow DINO's ``visualize_attention.py``; ``--gt_masks`` adds a Jaccard evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .argtypes import arch_flag, natural_int, positive_int
from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """``--pretrained_weights --arch --patch_size --checkpoint_key`` (shared with attention-video)."""
    p.add_argument("--pretrained_weights", "--pretrained", default=None,
                   help="checkpoint file or release name (dino_vits16, ...); default: the release "
                        "weights of --arch/--patch_size")
    p.add_argument("--arch", default=None, type=arch_flag, help="vit_tiny, vit_small or vit_base (default: inferred)")
    p.add_argument("--patch_size", type=positive_int, default=None, help="patch size (default: inferred)")
    p.add_argument("--checkpoint_key", default="teacher", help="entry of a full checkpoint (teacher/student)")


def add_threshold_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=float, default=None,
                   help="also keep the patches holding this share of each head's attention mass (e.g. 0.6)")


def image_size_arg(values: list[int] | None):
    """``--image_size`` values: ``[H, W]``, ``[S]`` (shorter side) or ``[0]`` / None (keep)."""
    if not values or values == [0]:
        return None
    if len(values) > 2 or min(values) < 1:
        raise ConfigError(f"--image_size takes H W, or one size for the shorter side; got {values}")
    return tuple(values) if len(values) == 2 else values[0]


def check_threshold(t: float | None) -> float | None:
    if t is not None and not 0.0 < t <= 1.0:
        raise ConfigError(f"--threshold must lie in (0, 1], got {t}")
    return t


def load_vit(args: argparse.Namespace):
    """The backbone named by the model flags, in eval mode on CPU."""
    from ..models import load_pretrained

    weights = args.pretrained_weights
    if weights is None:
        from ..models.pretrained import release_name
        weights = release_name(args.arch, args.patch_size)
        if weights is None:
            raise ConfigError("no --pretrained_weights given and no release weights exist for "
                              f"--arch {args.arch} --patch_size {args.patch_size}")
        print(f"no --pretrained_weights given: using the release weights {weights}")
    model = load_pretrained(weights, arch=args.arch, patch_size=args.patch_size,
                            checkpoint_key=args.checkpoint_key)
    if not hasattr(model, "get_last_selfattention"):
        raise ConfigError(f"{weights} holds a {type(model).__name__}: attention maps need a vision "
                          f"transformer")
    return model


def register(sub) -> None:
    p = sub.add_parser("attention", help="self-attention maps (and masks) of images",
                       description="Save the last block's class-token attention of every head as PNGs: "
                                   "attn-head{i}.png, attn-mean.png, attn-overlay.png, img.png; with "
                                   "--threshold also mask-head{i}.png, mask_th{threshold}_head{i}.png (as the "
                                   "release), mask-mean.png, mask-overlay.png.")
    add_model_flags(p)
    p.add_argument("--image_path", "--image", required=True, help="an image, or a folder of images")
    p.add_argument("--image_size", type=natural_int, nargs="+", default=None,
                   help="resize to H W (default 480 480, or 4x the size a dinokit run on small images trained "
                        "at: 128 128 for CIFAR), one value: shorter side, 0: keep size")
    p.add_argument("--output_dir", default=".", help="where to save (one sub-folder per image for a folder)")
    add_threshold_flag(p)
    p.add_argument("--gt_masks", default=None,
                   help="folder of ground-truth masks (same file stem as each image, nonzero = "
                        "foreground): print the Jaccard index of the thresholded attention (default 0.6)")
    p.add_argument("--cmap", default="viridis", help="matplotlib colormap of the attention PNGs")
    p.set_defaults(func=run)


def _images(image_path: str, output_dir: str) -> tuple[list[Path], Path | None]:
    from ..data import find_images

    path = Path(image_path).expanduser()
    if path.is_file():
        return [path], None
    if path.is_dir():  # maps written inside the folder by an earlier run are not inputs
        return find_images(path, exclude=[output_dir])[0], path
    raise DataError(f"--image_path {image_path!r} is neither an image file nor a folder")


def run(args: argparse.Namespace) -> int:
    from ..outputs import output_folder
    from ..viz.attention import visualize_images

    image_size = image_size_arg(args.image_size)  # None: keep each image's size (--image_size 0)
    threshold = check_threshold(args.threshold)
    gt_dir = Path(args.gt_masks).expanduser() if args.gt_masks else None
    if gt_dir is not None and not gt_dir.is_dir():
        raise DataError(f"--gt_masks {args.gt_masks!r} is not a folder")
    paths, root = _images(args.image_path, args.output_dir)
    output_folder(args.output_dir)
    model = load_vit(args)
    if args.image_size is None:
        image_size = _default_size(model.pretrained_cfg.get("image_size") if hasattr(model, "pretrained_cfg")
                                   else None)
    results = visualize_images(model, paths, args.output_dir, root, image_size, threshold, gt_dir, args.cmap)
    for r in results:
        print(f"{r.path} -> {r.out_dir}/ ({len(r.files)} PNGs)")
    if gt_dir is not None:
        _print_jaccard(results, Path(args.output_dir), threshold if threshold is not None else 0.6)
    return 0


def _default_size(trained: int | None) -> tuple[int, int]:
    """The release's 480 x 480, or 4x a small training size (32 px CIFAR crops: 480 px would
    stretch the position embedding 15x; 128 px gives a 16 x 16 grid of 8 px patches)."""
    if trained and trained < 224:
        log.info("attention at %d px: 4x the %d px the checkpoint was trained at (--image_size to change)",
                 4 * trained, trained)
        return 4 * trained, 4 * trained
    return 480, 480


def _print_jaccard(results, output_dir: Path, threshold: float) -> None:
    """Per-image and mean Jaccard; also written to ``output_dir/jaccard.json``."""
    scored = [r for r in results if r.jaccard is not None]
    missing = len(results) - len(scored)
    if not scored:
        print(f"Jaccard: no ground-truth mask matched any image stem ({missing} images)")
        return
    print(f"Jaccard at threshold {threshold} (union of heads / best head / mean-attention mask):")
    for r in scored:
        j = r.jaccard
        print(f"  {r.path.name}: {j['union']:.4f} / {j['best_head']:.4f} (head {j['best_head_index']}) / "
              f"{j['mean']:.4f}")
    means = {k: sum(r.jaccard[k] for r in scored) / len(scored) for k in ("union", "best_head", "mean")}
    print(f"  mean over {len(scored)} images: {means['union']:.4f} / {means['best_head']:.4f} / "
          f"{means['mean']:.4f}" + (f"  ({missing} images without a mask skipped)" if missing else ""))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "jaccard.json").write_text(json.dumps(
        {"threshold": threshold, "mean": means,
         "images": {str(r.path): r.jaccard for r in scored}}, indent=1))
