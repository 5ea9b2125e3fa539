"""``dinokit <command>``: one sub-module per command, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys

from ..errors import DinokitError
from ..outputs import removing_new_folders_on_error
from ..runtime import configure_logging
from .launch import takes_part

# Sub-modules of dinokit.cli that provide commands, in the order --help lists them.
COMMANDS = ["demo", "train", "submit", "info", "export", "attention", "attention-video", "report",
            "extract", "knn", "linear", "retrieve", "copydetect", "videoseg"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dinokit", description="DINO self-supervised vision transformers: train, evaluate, visualise.")
    parser.add_argument("--version", action="version", version=f"dinokit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name.replace('-', '_')}").register(sub)
    parser.commands = sub.choices  # command name -> its parser, for errors in that command's words
    return parser


def _unrecognized(extra: list[str], parser: argparse.ArgumentParser) -> str:
    """argparse's message for flags it does not know, with the closest known flag of each."""
    known = [o for action in parser._actions for o in action.option_strings]
    guesses = {flag: difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
               for flag in (e.split("=", 1)[0] for e in extra if e.startswith("--"))}
    hints = [f"{flag} after the command name" if g[0] == flag else f"{g[0]} for {flag}"
             for flag, g in guesses.items() if g]
    return f"unrecognized arguments: {' '.join(extra)}" + (f" (did you mean {', '.join(hints)}?)" if hints else "")


def _version() -> str:
    from .. import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith(("--local-rank=", "--local_rank=")):
        argv.append(argv.pop(0))  # torch.distributed.launch puts it before the command
    try:
        if argv and not argv[0].startswith("-") and argv[0] not in parser.commands:
            guess = difflib.get_close_matches(argv[0], list(parser.commands), n=1)
            parser.error(f"unknown command {argv[0]!r}" + (f" (did you mean {guess[0]}?)" if guess else "")
                         + f"; the commands are {', '.join(parser.commands)}")
        args, extra = parser.parse_known_args(argv)
        if extra:
            command = parser.commands.get(args.command, parser)
            command.error(_unrecognized(extra, command))
    except SystemExit as e:  # a usage error or --help: a return code for callers of main(), as for run errors
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if not takes_part(args):
            return 0
        with removing_new_folders_on_error():
            return int(args.func(args) or 0)
    except DinokitError as e:
        print(f"dinokit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dinokit {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        from ..train.distributed import cleanup
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
