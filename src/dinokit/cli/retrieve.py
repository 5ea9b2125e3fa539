"""``dinokit retrieve``: image retrieval mAP (DINO's ``eval_image_retrieval.py``).

Revisited Oxford / Paris: ``--data_path ROOT --dataset roxford5k`` reads
``ROOT/roxford5k/gnd_roxford5k.pkl`` and ``ROOT/roxford5k/jpg/``; prints mAP for the Easy,
Medium and Hard protocols. Class folders: ``--query DIR --gallery DIR`` (``<dir>/<class>/*``).
"""

from __future__ import annotations

import argparse
import json
import time

from .argtypes import positive_int
from .extract import add_backbone_args, add_bool, add_runtime_args, load_backbone, progress


def register(sub) -> None:
    p = sub.add_parser("retrieve", help="image retrieval mAP (revisited Oxford/Paris or class folders)",
                       description="Rank database images by cosine similarity of frozen features and report "
                                   "mean average precision.")
    g = p.add_argument_group("data")
    g.add_argument("--data_path", help="root of the revisited Oxford/Paris datasets")
    g.add_argument("--dataset", default="roxford5k", help="roxford5k or rparis6k (a folder of --data_path)")
    g.add_argument("--query", help="query images in class sub-folders (instead of --data_path)")
    g.add_argument("--gallery", help="gallery images in class sub-folders (with --query)")
    r = p.add_argument_group("retrieval")
    r.add_argument("--imsize", type=positive_int, default=224, help="longer side of the images fed to the network")
    add_bool(r, "--multiscale", "average features at scales 1, 1/sqrt(2), 1/2")
    add_backbone_args(p)
    add_runtime_args(p, batch_size=1)
    add_bool(p, "--use_cuda", "false: run on the CPU whatever --device says (the release's flag)", default=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..eval.retrieval import RetrievalOptions, evaluate_folders, evaluate_revisited
    from ..train.distributed import is_main

    if bool(args.query) != bool(args.gallery):
        raise ConfigError("give both --query and --gallery")
    if not args.query and not args.data_path:
        raise ConfigError("give --data_path (revisited Oxford/Paris) or --query and --gallery")
    if not args.use_cuda:
        args.device = "cpu"
    start = time.perf_counter()
    opts = RetrievalOptions(args.imsize, args.multiscale, args.batch_size_per_gpu, args.num_workers,
                            args.precision, progress(args), distributed=True)
    model = load_backbone(args)
    result = (evaluate_folders(model, args.query, args.gallery, opts) if args.query
              else evaluate_revisited(model, args.data_path, args.dataset, opts))
    if not is_main():  # under torchrun the others helped extract; process 0 reports
        return 0
    if args.query:
        print(f"Retrieval on {result['queries']} queries: mAP {result['mAP']:.2f}, "
              f"mP@1 {result['mP@1']:.2f}, mP@5 {result['mP@5']:.2f}, mP@10 {result['mP@10']:.2f}")
        info = {"layout": "folders", **result}
    else:
        print(f">> {args.dataset}: mAP E: {result['easy']['mAP']:.2f}, M: {result['medium']['mAP']:.2f}, "
              f"H: {result['hard']['mAP']:.2f}")
        for name in ("medium", "hard"):
            mp = ", ".join(f"{k} {v:.2f}" for k, v in result[name].items() if k != "mAP")
            print(f">> {args.dataset} {name}: {mp}")
        info = {"layout": "revisited", "dataset": args.dataset, **result}
    print(json.dumps({"command": "retrieve", "multiscale": bool(args.multiscale), **_rounded(info),
                      "seconds": round(time.perf_counter() - start, 2)}))
    return 0


def _rounded(obj):
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return round(obj, 4) if isinstance(obj, float) else obj
