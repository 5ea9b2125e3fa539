"""Deterministic preprocessing for evaluation: resize, centre crop, ImageNet normalisation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "pil_to_uint8", "normalize", "EvalTransform"]


def pil_to_uint8(im: Image.Image) -> torch.Tensor:
    """RGB PIL image to ``uint8 [3, H, W]``."""
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def normalize(x: torch.Tensor) -> torch.Tensor:
    """``uint8 [..., 3, H, W]`` (0-255) to float, ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1) * 255
    return (x.float() - mean) / std


class EvalTransform:
    """Shorter side to ``resize`` (bicubic), centre crop ``crop`` x ``crop``, normalise.

    ``resize=256, crop=224`` is the evaluation protocol of DINO on ImageNet; for small images
    (CIFAR) use ``resize=crop=32``. ``crop=None`` keeps the resized image whole.
    """

    def __init__(self, resize: int | None = 256, crop: int | None = 224):
        self.resize, self.crop = resize, crop

    def __call__(self, im: Image.Image) -> torch.Tensor:
        if self.resize:
            s = self.resize / min(im.size)
            im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BICUBIC)
        if self.crop:
            left = int(round((im.width - self.crop) / 2.0))
            top = int(round((im.height - self.crop) / 2.0))
            im = im.crop((left, top, left + self.crop, top + self.crop))
        return normalize(pil_to_uint8(im))
