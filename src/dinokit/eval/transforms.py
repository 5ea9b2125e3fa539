"""Image transforms of the DINO evaluations that ``data.EvalTransform`` (resize + centre crop) lacks.

Each maps an RGB PIL image to a normalised float tensor ``[3, H, W]``.
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from ..data import normalize, pil_to_uint8

__all__ = ["SquareResize", "Thumbnail", "RandomResizedCropFlip"]


class SquareResize:
    """Resize to ``size x size`` ignoring the aspect ratio (bicubic): copy detection's input."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, im: Image.Image) -> torch.Tensor:
        return normalize(pil_to_uint8(im.resize((self.size, self.size), Image.BICUBIC)))


class Thumbnail:
    """Shrink so that the longer side is at most ``max_side`` (antialiased), never enlarge.

    Image retrieval's input: sizes differ from image to image.
    """

    def __init__(self, max_side: int):
        self.max_side = max_side

    def __call__(self, im: Image.Image) -> torch.Tensor:
        im = im.copy()
        im.thumbnail((self.max_side, self.max_side), Image.LANCZOS)
        return normalize(pil_to_uint8(im))


class RandomResizedCropFlip:
    """Random crop of ``scale`` of the area and ``ratio`` aspect, resized to ``size`` (bilinear),
    then a horizontal flip with probability 1/2: the training augmentation of the linear probe.

    Same sampling as torchvision's ``RandomResizedCrop``: 10 tries, then a centre crop. Randomness
    comes from torch's global generator, which DataLoader workers seed one by one.
    """

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = size, scale, ratio

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``(left, top, w, h)`` of a random crop of a ``width x height`` image."""
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * _uniform(*self.scale)
            aspect = math.exp(_uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,)))
                left = int(torch.randint(0, width - w + 1, (1,)))
                return left, top, w, h
        aspect = width / height
        if aspect < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif aspect > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, im: Image.Image) -> torch.Tensor:
        left, top, w, h = self.box(im.width, im.height)
        im = im.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if float(torch.rand(())) < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        return normalize(pil_to_uint8(im))


def _uniform(lo: float, hi: float) -> float:
    return float(torch.empty(()).uniform_(lo, hi))
