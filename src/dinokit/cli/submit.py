"""``dinokit submit``: queue a training run on SLURM through submitit (the release's ``run_with_submitit.py``).

Takes every ``train`` flag plus the release's submitit flags (``--ngpus --nodes --timeout
--partition --use_volta32 --comment``); one task per GPU, requeued at the time limit.
"""

from __future__ import annotations

import argparse
import json
import re

from .argtypes import positive_int
from .train import add_config_flags, config_from_args


def register(sub) -> None:
    from ..train.config import TrainConfig
    p = sub.add_parser("submit", help="queue a training run on SLURM (submitit), one task per GPU",
                       description="Check the training flags, then submit the run as a SLURM job through "
                                   "submitit (pip install submitit). The job requeues itself at its time limit "
                                   "and resumes from --output_dir.")
    s = p.add_argument_group("SLURM")
    s.add_argument("--ngpus", type=positive_int, default=8, help="GPUs per node, one task each")
    s.add_argument("--nodes", type=positive_int, default=2, help="number of nodes")
    s.add_argument("--timeout", type=positive_int, default=2800, help="job time limit in minutes")
    s.add_argument("--partition", default="", help="SLURM partition (default: the cluster's)")
    s.add_argument("--use_volta32", action="store_true", help="ask for 32 GB V100 GPUs (constraint volta32gb)")
    s.add_argument("--comment", default="", help="SLURM comment of the job")
    s.add_argument("--job_dir", default="", help="submitit's logs (default: OUTPUT_DIR/slurm)")
    s.add_argument("--cluster", choices=["slurm", "local"], default="slurm",
                   help="local: run the tasks on this machine, on CPUs, and wait (to try a submission)")
    p.add_argument("--config", default=None, help="YAML file of flag: value pairs")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=run)


def _cause(trace: str) -> str:
    """The last ``SomeError: message`` line of a task's traceback, without the error's module path."""
    errors = [line for line in trace.splitlines()
              if re.match(r"[\w.]*(Error|Exception|Interrupt)\b.*:", line) and "FailedJobError" not in line]
    if not errors:
        return trace.strip().splitlines()[0] if trace.strip() else "no traceback"
    name, message = errors[-1].split(":", 1)
    return f"{name.rsplit('.', 1)[-1]}:{message}"


def run(args: argparse.Namespace) -> int:
    from ..errors import DinokitError
    from ..train.slurm import SlurmConfig, submit

    cfg = config_from_args(args)
    slurm = SlurmConfig(ngpus=args.ngpus, nodes=args.nodes, timeout=args.timeout, partition=args.partition,
                        use_volta32=args.use_volta32, comment=args.comment, job_dir=args.job_dir,
                        cluster=args.cluster)
    job = submit(cfg, slurm)
    print(f"submitted job {job.job_id}: {slurm.nodes} x {slurm.ngpus} tasks, logs in {job.paths.folder}, "
          f"checkpoints in {cfg.output_dir}")
    info = {"command": "submit", "job_id": str(job.job_id), "logs": str(job.paths.folder),
            "output_dir": cfg.output_dir}
    if slurm.cluster == "local":
        try:
            info["epochs"] = job.results()[0]["epochs"]
        except Exception as e:  # submitit's FailedJobError holds the task's whole traceback
            raise DinokitError(f"the job failed: {_cause(str(e))} (logs in {job.paths.folder})") from None
    print(json.dumps(info))
    return 0
