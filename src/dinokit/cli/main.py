"""``dinokit <command>``: one sub-module per command, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
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
    parser.commands = sub.choices  # command name -> its parser, for errors in that command's words
    return parser


def _launched_rank() -> tuple[int, int]:
    """``(rank, processes)`` a launcher (torchrun, torch.distributed.launch, srun) started us as."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    return int(env.get("SLURM_PROCID", 0)), int(env.get("SLURM_NTASKS", 1))


def _one_process_only(command: str) -> bool:
    """Evaluation commands run in one process: under a launcher, process 0 works and the others
    leave at once (rather than all repeating the work and writing the same files)."""
    rank, world = _launched_rank()
    if world > 1 and rank == 0:
        logging.getLogger("dinokit").warning(
            "%d processes (launcher environment): `dinokit %s` runs in one process; process 0 works and any "
            "others leave at once", world, command)
        for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):  # so the demo's training
            os.environ.pop(name, None)                                       # does not wait for the others
    return rank > 0


def _sharded(args: argparse.Namespace) -> bool:
    """Whether a command's processes split its feature extraction under a launcher: knn, extract,
    and linear on extracted features (--augment trains through the backbone in one process)."""
    return args.command in ("knn", "extract") or (args.command == "linear" and not args.augment)


def _join_launched_processes(args: argparse.Namespace) -> None:
    """Join the process group of a sharded command; only process 0 logs below warnings."""
    from ..runtime import resolve_device
    from ..train.distributed import init_distributed

    if init_distributed(resolve_device(args.device)).rank > 0:
        logging.getLogger().setLevel(logging.WARNING)


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith(("--local-rank=", "--local_rank=")):
        argv.append(argv.pop(0))  # torch.distributed.launch puts it before the command
    try:
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
        if _sharded(args) and _launched_rank()[1] > 1:
            _join_launched_processes(args)
        elif args.command != "train" and _one_process_only(args.command):
            return 0
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
