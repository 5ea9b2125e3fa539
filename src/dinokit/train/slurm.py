"""Training as a SLURM job through submitit, as the release's ``run_with_submitit.py`` does.

``submit(cfg, SlurmConfig(nodes=2, ngpus=8))`` queues one task per GPU; each task exports torch's
``env://`` variables from the job (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...) and trains. A
job that reaches its time limit or is preempted requeues itself and resumes from ``output_dir``.
submitit is optional (``pip install submitit``).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..runtime import configure_logging
from .config import TrainConfig
from .trainer import train

__all__ = ["SlurmConfig", "TrainingJob", "submit"]

log = logging.getLogger(__name__)


@dataclass
class SlurmConfig:
    """The release's submitit flags: ``--ngpus --nodes --timeout --partition --use_volta32 --comment``."""

    ngpus: int = 8              # GPUs of each node, one task each
    nodes: int = 2
    timeout: int = 2800         # minutes
    partition: str = ""
    use_volta32: bool = False   # request 32 GB V100s (constraint volta32gb)
    comment: str = ""
    job_dir: str = ""           # submitit's logs; default <output_dir>/slurm
    cpus_per_task: int = 10
    mem_gb_per_gpu: int = 40
    cluster: str = "slurm"      # "local": the tasks run on this machine (to try a submission)


class TrainingJob:
    """What every task of the job runs; submitit pickles it to the nodes."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def __call__(self) -> dict:
        import submitit
        configure_logging()
        # All GPUs stay visible: the trainer picks cuda:LOCAL_RANK itself.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return train(self.cfg)

    def checkpoint(self):
        """Called by submitit at the time limit or on preemption: requeue the same training, which
        resumes from the last checkpoint in ``output_dir``."""
        import submitit
        return submitit.helpers.DelayedSubmission(TrainingJob(self.cfg))


def submit(cfg: TrainConfig, slurm: SlurmConfig):
    """Queue ``cfg``'s training (checked first) and return the submitit job."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("dinokit submit needs submitit: pip install submitit (or dinokit[slurm])") from None
    cfg.validate()
    if slurm.cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("no SLURM here (sbatch is not on PATH): submit from a cluster's login node, or "
                          "train with torchrun on this machine")
    if not Path(cfg.data_path).is_dir():  # the nodes may mount what this machine does not: a warning
        log.warning("--data_path %s is not a folder here; the job fails unless the nodes see it", cfg.data_path)
    job_dir = Path(slurm.job_dir or Path(cfg.output_dir) / "slurm")
    executor = submitit.AutoExecutor(folder=str(job_dir), cluster=slurm.cluster, slurm_max_num_timeout=30)
    extra = {"slurm_partition": slurm.partition} if slurm.partition else {}
    if slurm.use_volta32:
        extra["slurm_constraint"] = "volta32gb"
    if slurm.comment:
        extra["slurm_comment"] = slurm.comment
    gpus = slurm.ngpus if slurm.cluster == "slurm" else 0  # local tries run on CPUs, one task per "GPU"
    executor.update_parameters(name="dino", nodes=slurm.nodes, tasks_per_node=slurm.ngpus, gpus_per_node=gpus,
                               cpus_per_task=slurm.cpus_per_task, mem_gb=slurm.mem_gb_per_gpu * slurm.ngpus,
                               timeout_min=slurm.timeout, slurm_signal_delay_s=120, **extra)
    return executor.submit(TrainingJob(cfg))
