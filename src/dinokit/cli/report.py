"""``dinokit report OUTPUT_DIR``: an HTML report of a training run."""

from __future__ import annotations

import argparse

from .argtypes import natural_int


def register(sub) -> None:
    p = sub.add_parser("report", help="HTML report of a training run (curves, collapse checks, attention)",
                       description="Write OUTPUT_DIR/report.html with its plots in OUTPUT_DIR/report/.")
    p.add_argument("output_dir", help="the training run's output directory")
    p.add_argument("--attention_images", type=natural_int, default=4,
                   help="images whose attention maps are shown (0: none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..viz.report import write_report

    print(f"wrote {write_report(args.output_dir, args.attention_images)}")
    return 0
