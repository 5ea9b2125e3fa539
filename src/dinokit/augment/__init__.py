"""Batched, on-device data augmentation: the DINO multi-crop recipe and its primitive ops."""

from . import ops
from .multicrop import AugmentConfig, DINOMultiCrop

__all__ = ["ops", "AugmentConfig", "DINOMultiCrop"]
