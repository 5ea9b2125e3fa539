"""``dinokit copydetect``: copy detection mAP (DINO's ``eval_copy_detection.py``, own folder layout).

``--data_path DIR`` holds ``query/`` (the copies), ``database/`` (the originals) and optionally
``distractors/`` and ``whitening/``; each can also be given on its own (``--query``,
``--database``, ``--distractors_path``, ``--whitening_path``). A query matches the database images
with the same file stem, or the same first ``--match_prefix`` characters, or the pairs of a
``--gt_csv`` file (``query,database`` rows). A ``--data_path`` in the Copydays layout of the
release's command (``original/``, ``strong/``, ...) scores the strong block against the originals
by 4-character name prefixes, the number the paper reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from .argtypes import positive_float, positive_int
from .extract import add_backbone_args, add_bool, add_runtime_args, load_backbone, progress

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("copydetect", help="copy detection mAP (class token + GeM features, whitening)",
                       description="Find the originals of edited copies among database and distractor images "
                                   "by cosine similarity of [CLS ++ GeM(patch tokens)] features, optionally "
                                   "PCA-whitened, and report mAP.")
    g = p.add_argument_group("data")
    g.add_argument("--data_path", help="folder with query/, database/ and optional distractors/, whitening/")
    g.add_argument("--query", help="folder of copies (default DATA_PATH/query)")
    g.add_argument("--database", help="folder of originals (default DATA_PATH/database)")
    g.add_argument("--distractors_path", help="unrelated images added to the database (default DATA_PATH/distractors)")
    g.add_argument("--whitening_path", help="images to learn the whitening from (default DATA_PATH/whitening)")
    g.add_argument("--gt_csv", help="CSV of query,database file pairs (default: match file names)")
    g.add_argument("--match_prefix", type=positive_int, default=None,
                   help="match the first N characters of file stems (Copydays strong block: 4)")
    c = p.add_argument_group("features")
    c.add_argument("--imsize", type=positive_int, default=320, help="images are resized to imsize x imsize")
    c.add_argument("--gem_p", type=positive_float, default=4.0, help="power of the GeM pooling of patch tokens")
    add_backbone_args(p)
    add_runtime_args(p, batch_size=16)
    add_bool(p, "--use_cuda", "false: run on the CPU whatever --device says (the release's flag)", default=True)
    p.set_defaults(func=run)


def _folder(explicit: str | None, root: Path | None, name: str, required: bool) -> Path | None:
    from ..errors import ConfigError, DataError

    if explicit:
        if not Path(explicit).is_dir():
            raise DataError(f"{explicit} is not a folder")
        return Path(explicit)
    if root is not None and (root / name).is_dir():
        return root / name
    if required:
        raise ConfigError(f"no {name} folder: give --{name} or --data_path containing {name}/")
    return None


def _copydays_layout(root: Path) -> bool:
    """The Copydays folders the release's eval_copy_detection.py reads (original/, strong/ ...)."""
    return (root / "original").is_dir() and (root / "strong").is_dir() and not (root / "query").is_dir()


def run(args: argparse.Namespace) -> int:
    from ..eval.copydetect import CopyDetectOptions, evaluate_copy_detection
    from ..train.distributed import is_main

    if not args.use_cuda:
        args.device = "cpu"
    start = time.perf_counter()
    root = Path(args.data_path) if args.data_path else None
    if root is not None and _copydays_layout(root) and not (args.query or args.database):
        # The release's --data_path: the Copydays "strong" block against the originals, the paper's number.
        log.info("Copydays layout in %s: the strong block as queries, original/ as database (4-character "
                 "name prefixes match)", root)
        args.query, args.database = str(root / "strong"), str(root / "original")
        args.match_prefix = args.match_prefix or 4
    query, database = _folder(args.query, root, "query", True), _folder(args.database, root, "database", True)
    distractors = _folder(args.distractors_path, root, "distractors", False)
    whitening = _folder(args.whitening_path, root, "whitening", False)
    opts = CopyDetectOptions(args.imsize, args.gem_p, args.match_prefix, args.gt_csv, args.batch_size_per_gpu,
                             args.num_workers, args.precision, progress(args), distributed=True)
    result = evaluate_copy_detection(load_backbone(args), query, database, distractors, whitening, opts)
    if not is_main():  # under torchrun the others helped extract; process 0 reports
        return 0
    print(f"Copy detection: {result['queries']} queries, {result['database']} database images "
          f"({result['distractors']} distractors), whitening {'on' if result['whitened'] else 'off'}: "
          f"mAP {result['mAP']:.2f}, top-1 {result['top1']:.2f}")
    print(json.dumps({"command": "copydetect", **{k: round(v, 4) if isinstance(v, float) else v
                                                  for k, v in result.items()},
                      "seconds": round(time.perf_counter() - start, 2)}))
    return 0
