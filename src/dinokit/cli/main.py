"""``dinokit <command>``: one sub-module per command, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import DinokitError

# Sub-modules of dinokit.cli that provide commands, in the order --help lists them.
COMMANDS = ["demo", "train", "info", "attention", "attention-video", "report",
            "extract", "knn", "linear", "retrieve", "copydetect", "videoseg"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dinokit", description="DINO self-supervised vision transformers: train, evaluate, visualise.")
    parser.add_argument("--version", action="version", version=f"dinokit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name.replace('-', '_')}").register(sub)
    return parser


def _version() -> str:
    from .. import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # a usage error or --help: a return code for callers of main(), as for run errors
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DinokitError as e:
        print(f"dinokit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dinokit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
