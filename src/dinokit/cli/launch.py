"""How commands behave when a launcher (torchrun, torch.distributed.launch, srun) starts several
processes: ``train`` trains across all of them; ``knn``, ``extract``, ``retrieve``, ``copydetect``
and ``linear`` on extracted features split the images to extract, then process 0 reports; every
other command runs in process 0 alone while the others leave at once (rather than repeating the
work into the same files).
"""

from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger("dinokit")


def sharded(args: argparse.Namespace) -> bool:
    """Whether the command's processes split its feature extraction (``linear --augment`` trains
    through the backbone, in one process)."""
    return args.command in ("knn", "extract", "retrieve", "copydetect") or (args.command == "linear" and
                                                                            not args.augment)


def takes_part(args: argparse.Namespace) -> bool:
    """Prepare this process for the command; False when it should leave without running it."""
    from ..train.distributed import init_distributed, launched

    info = launched()
    if not info.enabled or args.command == "train":
        return True
    if sharded(args):
        from ..runtime import resolve_device
        joined = init_distributed(resolve_device(args.device), dist_url=args.dist_url, local_rank=args.local_rank)
        if joined.rank > 0:
            logging.getLogger().setLevel(logging.WARNING)  # one process tells the story
        return True
    if info.rank == 0:
        log.warning("%d processes (launcher environment): `dinokit %s` runs in one process; process 0 works "
                    "and any others leave at once", info.world_size, args.command)
        for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):  # so what it runs (the demo's
            os.environ.pop(name, None)                                       # training) waits for no one
    return info.rank == 0
