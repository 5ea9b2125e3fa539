"""``dinokit knn``: weighted k-NN classification of frozen features (DINO's ``eval_knn.py``).

Inputs, one of: ``--data_path`` with ``train/`` and ``val/`` (or ``test/``) class folders;
``--train_path`` and ``--val_path``; ``--load_features`` with a folder (``train.pt`` + ``val.pt``
as written by ``--dump_features``, or the release's ``trainfeat.pth`` ... files) or two feature
files (train, val).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from .argtypes import positive_float, positive_int
from .extract import (add_backbone_args, add_bool, add_image_args, add_runtime_args, image_transform,
                      load_backbone, progress)

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("knn", help="weighted k-NN accuracy of frozen features",
                       description="k-NN classification as in DINO: cosine similarity, the k nearest training "
                                   "images vote with weight exp(sim/T). Prints top-1/top-5 per k and a JSON line.")
    g = p.add_argument_group("data")
    g.add_argument("--data_path", help="folder with train/ and val/ (or test/) class sub-folders")
    g.add_argument("--train_path", help="training image folder (with --val_path)")
    g.add_argument("--val_path", help="validation image folder (with --train_path)")
    g.add_argument("--load_features", nargs="+", metavar="PATH",
                   help="a folder of dumped features, or two feature files: TRAIN VAL (.pt / .npz)")
    g.add_argument("--dump_features", metavar="DIR", help="save the extracted features as DIR/train.pt and DIR/val.pt")
    g.add_argument("--dump_format", default="dinokit", choices=["dinokit", "release"],
                   help="release: the four files of eval_knn.py (trainfeat.pth, testfeat.pth, trainlabels.pth, "
                        "testlabels.pth; L2-normalised features) instead of train.pt/val.pt with paths and classes")
    k = p.add_argument_group("k-NN")
    k.add_argument("--nb_knn", type=positive_int, nargs="+", default=[10, 20, 100, 200], help="values of k")
    k.add_argument("--temperature", type=positive_float, default=0.07, help="temperature T of the vote weights")
    add_bool(k, "--use_cuda", "run the neighbour search on --device (false: on the CPU)", default=True)
    add_backbone_args(p)
    add_runtime_args(p)
    add_image_args(p)
    p.set_defaults(func=run)


def split_folders(args: argparse.Namespace) -> tuple[Path, Path]:
    """``(train, val)`` image folders from ``--train_path/--val_path`` or ``--data_path``."""
    from ..errors import ConfigError, DataError

    if args.train_path or args.val_path:
        if not (args.train_path and args.val_path):
            raise ConfigError("give both --train_path and --val_path")
        for flag, folder in (("--train_path", args.train_path), ("--val_path", args.val_path)):
            if not Path(folder).is_dir():
                raise DataError(f"{flag} {folder!r} is not a folder (it needs <class>/*.jpg sub-folders)")
        return Path(args.train_path), Path(args.val_path)
    if not args.data_path:
        raise ConfigError("give --data_path, --train_path/--val_path, or --load_features")
    root = Path(args.data_path)
    val = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if not (root / "train").is_dir() or val is None:
        raise DataError(f"{root} needs train/ and val/ (or test/) sub-folders")
    return root / "train", val


def load_feature_pair(paths: list[str]):
    """``(train, val)`` Features from a dump folder or two files."""
    from ..errors import ConfigError
    from ..eval.features import align_classes, load_features, load_official_dump

    if len(paths) == 2:
        train, val = load_features(paths[0]), load_features(paths[1])
    elif len(paths) == 1:
        folder = Path(paths[0])
        if folder.is_file():
            raise ConfigError(f"--load_features {folder}: give the two files (train, val), or a folder "
                              f"holding train.pt and val.pt")
        if (folder / "trainfeat.pth").is_file():
            train, val = load_official_dump(folder)
        else:
            train, val = (load_features(_feature_file(folder, split)) for split in ("train", "val"))
    else:
        raise ConfigError("--load_features takes a folder or two files (train, val)")
    if train.dim != val.dim:
        raise ConfigError(f"train features are {train.dim}-d but val features {val.dim}-d")
    return train, align_classes(train.classes, val)


def save_dump(folder: Path, train, val, layout: str = "dinokit") -> None:
    """``train.pt`` / ``val.pt``, or the release's four files, which its ``--load_features`` reads."""
    import torch
    import torch.nn.functional as F

    if layout == "dinokit":
        train.save(folder / "train.pt")
        val.save(folder / "val.pt")
        return
    for split, feats in (("train", train), ("test", val)):
        torch.save(F.normalize(feats.features, dim=1), folder / f"{split}feat.pth")
        torch.save(feats.labels, folder / f"{split}labels.pth")


def _feature_file(folder: Path, split: str) -> Path:
    """``folder/split.pt``, or the ``.pth`` / ``.npz`` that ``extract --output`` may have written."""
    found = [folder / f"{split}{ext}" for ext in (".pt", ".pth", ".npz") if (folder / f"{split}{ext}").is_file()]
    return found[0] if found else folder / f"{split}.pt"  # missing: load_features names it


def extract_folder(args: argparse.Namespace, model, folder, embed=None, desc: str = ""):
    """Features of one image folder with the runtime and preprocessing flags."""
    from ..eval.features import extract_features

    bar = progress(args)
    return extract_features(model, folder, embed, image_transform(args), batch_size=args.batch_size_per_gpu,
                            num_workers=args.num_workers, precision=args.precision,
                            progress=bar(desc) if bar else None, distributed=True)


def labelled_folders(args: argparse.Namespace) -> tuple[Path, Path]:
    """``split_folders``, checked before any extraction (which can take hours): at least 2 train
    classes, and every val class among them."""
    from ..data import class_folders
    from ..eval.features import check_classes

    train_dir, val_dir = split_folders(args)
    check_classes(class_folders(train_dir), class_folders(val_dir) or [""], str(train_dir))  # [""]: loose images
    return train_dir, val_dir


def extract_pair(args: argparse.Namespace, embed=None):
    """Train and val Features of the image folders the flags name."""
    from ..eval.features import align_classes

    train_dir, val_dir = labelled_folders(args)
    model = load_backbone(args)
    train = extract_folder(args, model, train_dir, embed, "train")
    return train, align_classes(train.classes, extract_folder(args, model, val_dir, embed, "val"))


def run(args: argparse.Namespace) -> int:
    from ..eval.knn import knn_evaluate
    from ..outputs import output_folder
    from ..runtime import resolve_device
    from ..train.distributed import is_main

    start = time.perf_counter()
    if args.dump_features:
        output_folder(args.dump_features, "--dump_features")
    if args.load_features:
        train, val = load_feature_pair(args.load_features)
    else:
        train, val = extract_pair(args)
    if not is_main():  # under torchrun the others helped extract; process 0 searches and reports
        return 0
    if args.dump_features and not args.load_features:
        save_dump(Path(args.dump_features), train, val, args.dump_format)
    device = resolve_device(args.device) if args.use_cuda else resolve_device("cpu")
    for k in sorted(k for k in args.nb_knn if k > len(train)):
        log.warning("%d-NN: only %d train images, so every one of them votes", k, len(train))
    search_start = time.perf_counter()
    results = knn_evaluate(train.features.to(device), train.labels.to(device), val.features, val.labels,
                           ks=args.nb_knn, T=args.temperature, precision=args.precision)
    search_s = time.perf_counter() - search_start
    print(f"k-NN on {len(train)} train / {len(val)} val features ({train.dim}-d), T={args.temperature}")
    few = len(train.labels.unique()) < 5  # top-5 of fewer classes is 100% whatever the features
    for r in results.values():
        r["top5"] = None if few else r["top5"]
    for k, r in results.items():
        top5 = "n/a (fewer than 5 classes)" if few else f"{r['top5']:.2f}"
        print(f"{k}-NN classifier result: Top1: {r['top1']:.2f}, Top5: {top5}")
    print(json.dumps({"command": "knn", "train": len(train), "val": len(val), "dim": train.dim,
                      "temperature": args.temperature,
                      "results": {str(k): {m: v if v is None else round(v, 4) for m, v in r.items()}
                                  for k, r in results.items()},
                      "knn_seconds": round(search_s, 3), "seconds": round(time.perf_counter() - start, 2)}))
    return 0
