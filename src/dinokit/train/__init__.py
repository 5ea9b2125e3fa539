"""Training: the DINO loss, schedules, optimiser set-up, teacher EMA and the training loop."""

from .config import PRESETS, TrainConfig, load_config
from .loss import DINOLoss
from .schedules import Schedules, cosine_scheduler

__all__ = ["DINOLoss", "cosine_scheduler", "Schedules", "TrainConfig", "load_config", "PRESETS", "train"]


def train(cfg: TrainConfig) -> dict:
    """Train as ``cfg`` says (see ``dinokit.train.trainer.train``)."""
    from .trainer import train as _train
    return _train(cfg)
