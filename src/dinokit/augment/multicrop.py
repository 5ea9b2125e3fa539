"""The DINO multi-crop recipe (``DataAugmentationDINO`` of Caron et al., 2021), batched on the device.

Input is a batch of uint8 canvases ``[B, 3, S, S]`` with the valid ``(height, width)`` of each
image in ``hw [B, 2]`` (see :mod:`dinokit.data.train_dataset`). Every crop of every image gets its
own random parameters, all drawn in one call from a CPU ``torch.Generator`` (same state -> same
output), turned into a plan on the host and sent to the device in one copy; the image work is a
few dozen batched kernels per crop size, with no Python loop over samples and no device-to-host
synchronisation. Within a crop size the rows are sorted by where the hue rotation falls in their
jitter order, so that each of the four positions is one contiguous block; they are put back in
crop-major order at the end. On CPUs, large crops are processed a few rows at a time so that the
elementwise passes stay in cache (:data:`CPU_CHUNK_BYTES`).

Per crop, as in the official recipe: RandomResizedCrop (torchvision's box sampling), horizontal
flip (p=0.5), ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8 in a per-sample random order of its four
ops, grayscale (p=0.2), Gaussian blur (sigma ~ U[0.1, 2], p=1.0 / 0.1 / 0.5 for global 1 /
global 2 / locals), solarisation (p=0.2, second global only), ImageNet normalisation.

Deviations from the PIL/torchvision pipeline: the crop is resized bilinearly without
antialiasing (as ``grid_sample(mode="bilinear", align_corners=False)``), instead of PIL's
antialiased bicubic resize; all colour ops run in float without rounding to uint8 between
steps; grayscale uses PIL's weights 0.299/0.587/0.114 (torchvision's tensor ops use 0.2989); the
blur is an exact Gaussian of radius ``ceil(3 * sigma_max)`` with reflect padding, where PIL
approximates it with box filters; crops are taken from the canvas, i.e. from the image already
reduced to at most ``S`` pixels on its longer side.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from . import ops

__all__ = ["AugmentConfig", "DINOMultiCrop"]

# On CPUs, crops of one size that take more than 4 x this many float32 bytes are processed in
# chunks of about this size: each elementwise pass then reads from cache instead of memory.
CPU_CHUNK_BYTES = 1 << 20

# Columns of the per-crop uniform draws.
_RRC = slice(0, ops.RRC_NUM_RAND)
_FLIP, _JIT, _FAC, _ORD, _GRAY, _BLUR, _SIGMA, _SOL = (ops.RRC_NUM_RAND + i for i in (0, 1, 2, 6, 10, 11, 12, 13))
_NUM_RAND = ops.RRC_NUM_RAND + 14


@dataclass
class AugmentConfig:
    """Parameters of the DINO multi-crop augmentation (defaults: the official ImageNet recipe)."""

    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    local_crops_number: int = 8
    global_size: int = 224
    local_size: int = 96
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    p_jitter: float = 0.8
    p_gray: float = 0.2
    p_blur: tuple[float, float, float] = (1.0, 0.1, 0.5)
    p_solarize: float = 0.2
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


class DINOMultiCrop:
    """``aug(images_uint8 [B,3,H,W], hw [B,2], generator)`` -> ``2 + local_crops_number`` crops.

    ``hw`` holds each image's valid height and width from the top-left corner (images of several
    sizes padded into one canvas); without it, every image fills the whole ``H x W``.

    Returns ``[B, 3, global_size, global_size]`` twice, then ``[B, 3, local_size, local_size]``
    ``local_crops_number`` times, ImageNet-normalised, dtype ``out_dtype``, on ``images``' device.
    A call's ``global_size`` and ``global_scale`` override the configured size and area range of
    the global crops (progressive resizing, crop curriculum).
    """

    def __init__(self, global_crops_scale=(0.4, 1.0), local_crops_scale=(0.05, 0.4),
                 local_crops_number: int = 8, global_size: int = 224, local_size: int = 96,
                 blur_sigma=(0.1, 2.0), jitter=(0.4, 0.4, 0.2, 0.1), p_jitter: float = 0.8,
                 p_gray: float = 0.2, p_blur=(1.0, 0.1, 0.5), p_solarize: float = 0.2,
                 ratio=(3 / 4, 4 / 3),
                 out_dtype: torch.dtype = torch.float32):
        self.cfg = AugmentConfig(tuple(global_crops_scale), tuple(local_crops_scale),
                                 int(local_crops_number), int(global_size), int(local_size),
                                 tuple(blur_sigma), tuple(jitter), float(p_jitter), float(p_gray),
                                 tuple(p_blur), float(p_solarize), tuple(ratio))
        self.out_dtype = out_dtype

    @classmethod
    def from_config(cls, cfg: AugmentConfig, out_dtype: torch.dtype = torch.float32) -> "DINOMultiCrop":
        return cls(**asdict(cfg), out_dtype=out_dtype)

    @property
    def num_crops(self) -> int:
        return 2 + self.cfg.local_crops_number

    def __repr__(self) -> str:
        return f"DINOMultiCrop({self.cfg})"

    def __call__(self, images: torch.Tensor, hw: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, out_dtype: torch.dtype | None = None,
                 global_size: int | None = None, global_scale: tuple[float, float] | None = None
                 ) -> list[torch.Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"DINOMultiCrop takes uint8 RGB images [B, 3, H, W] (values 0-255), got "
                             f"{images.dtype} {tuple(images.shape)}")
        if hw is None:
            hw = torch.tensor([images.shape[2:]], dtype=torch.long).expand(images.shape[0], 2)
        c, B = self.cfg, images.shape[0]
        dtype = out_dtype or self.out_dtype
        global_size = int(global_size or c.global_size)
        if B == 0:
            return [images.new_empty((0, 3, s, s), dtype=dtype)
                    for s in [global_size] * 2 + [c.local_size] * c.local_crops_number]
        groups = self._groups(B, global_size, tuple(global_scale or c.global_crops_scale))
        n_rows = [len(g[2]) for g in groups]
        plans = [_plan(c, u, p_blur, p_sol, B)
                 for u, (_, _, p_blur, p_sol) in zip(_uniforms(sum(n_rows), generator).split(n_rows), groups)]
        # every box at once, where hw lives; then all parameters to the device in one copy
        scale = torch.tensor([g[1] for g in groups]).repeat_interleave(torch.tensor(n_rows), 0)
        src = torch.cat([p["src"] for p in plans])
        boxes = ops.random_resized_crop_params(hw.index_select(0, src.to(hw.device, non_blocking=True)), scale, c.ratio,
                                               rand=torch.cat([p.pop("rrc") for p in plans]))
        counts = [p.pop("counts") for p in plans]
        keys = list(plans[0])
        moved = _to_device([boxes, *(t for p in plans for t in p.values())], images.device)
        xf = images.float()  # the one conversion; values stay in 0..255
        crops = []
        for i, (size, boxes) in enumerate(zip((g[0] for g in groups), moved[0].split(n_rows))):
            d = dict(zip(keys, moved[1 + i * len(keys):1 + (i + 1) * len(keys)]))
            crops += self._augment(xf, boxes, plans[i], d, counts[i], size, dtype).split(B)
        return crops

    def _groups(self, B: int, global_size: int, global_scale: tuple[float, float]) -> list[tuple]:
        """(size, scale, p_blur [n], p_solarize [n]) of the global crops, then of the local ones."""
        c, n = self.cfg, self.cfg.local_crops_number * B
        p_blur = torch.full((2 * B,), c.p_blur[0])
        p_blur[B:] = c.p_blur[1]
        p_sol = torch.zeros(2 * B)
        p_sol[B:] = c.p_solarize
        groups = [(global_size, global_scale, p_blur, p_sol)]
        if n:
            groups.append((c.local_size, c.local_crops_scale, torch.full((n,), c.p_blur[2]), torch.zeros(n)))
        return groups

    def _augment(self, xf, boxes, host, d, counts, size, dtype) -> torch.Tensor:
        """Crops of one size, rows sorted by :func:`_plan` (``host``: its CPU tensors, ``d``: on the
        device); returned crop-major and normalised."""
        n, dev = boxes.shape[0], xf.device
        row_bytes = 12 * size * size
        step = n if dev.type != "cpu" or n * row_bytes <= 4 * CPU_CHUNK_BYTES else max(1, CPU_CHUNK_BYTES // row_bytes)
        out = torch.empty(n, 3, size, size, dtype=dtype, device=dev) if step < n or dtype != xf.dtype else None
        radius = math.ceil(3 * self.cfg.blur_sigma[1])
        for a in range(0, n, step):
            b = min(n, a + step)
            x = ops.crop_resize_flip(xf, boxes[a:b], d["flip"][a:b], size, d["src"][a:b])
            slots = _slot_counts(counts, a, b)
            m = sum(slots[:4])  # the jittered rows come first, sorted by hue slot
            if m:
                ops.color_jitter(x[:m], d["coef"][a:a + m], d["hue"][a:a + m], slots)
            ops.apply_rows(x, _rows_in(host["gray"], d["gray"], a, b), ops.grayscale3)
            i, j = _span(host["blur"], a, b)
            ops.apply_rows(x, _rows_in(host["blur"], d["blur"], a, b), ops.gaussian_blur, d["sigma"][i:j], radius)
            ops.apply_rows(x, _rows_in(host["sol"], d["sol"], a, b), ops.solarize)
            x = ops.normalize_into(x, IMAGENET_MEAN, IMAGENET_STD, out=x if out is None else out[a:b])
        return x.index_select(0, d["inv"]) if out is None else out.index_select(0, d["inv"])  # crop-major


def _slot_counts(counts: list[int], a: int, b: int) -> list[int]:
    """How many of the rows ``a..b-1`` fall in each block of ``counts`` (blocks laid end to end)."""
    out, start = [], 0
    for c in counts:
        out.append(max(0, min(b, start + c) - max(a, start)))
        start += c
    return out


def _span(rows: torch.Tensor, a: int, b: int) -> tuple[int, int]:
    """Positions ``i, j`` such that ``rows[i:j]`` (sorted, CPU) are the entries in ``[a, b)``."""
    if a == 0 and (len(rows) == 0 or b > int(rows[-1])):  # the whole group at once
        return 0, len(rows)
    i, j = torch.searchsorted(rows, torch.tensor([a, b])).tolist()
    return i, j


def _rows_in(host_rows: torch.Tensor, rows: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """The entries of ``rows`` (device copy of the sorted ``host_rows``) in ``[a, b)``, minus ``a``."""
    i, j = _span(host_rows, a, b)
    return rows[i:j] - a if a else rows[i:j]


def _uniforms(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``[n, _NUM_RAND]`` uniforms on the CPU (a device generator's draws are copied back)."""
    device = generator.device if generator is not None else "cpu"
    return torch.rand(n, _NUM_RAND, generator=generator, device=device).cpu()


def _plan(c: AugmentConfig, u: torch.Tensor, p_blur: torch.Tensor, p_sol: torch.Tensor, B: int) -> dict:
    """Host-side parameters of one crop size, rows sorted as :func:`ops.jitter_plan` wants."""
    b, ct, s, h = c.jitter
    lo = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - ct), max(0.0, 1 - s), -h])
    hi = torch.tensor([1 + b, 1 + ct, 1 + s, h])
    factors = lo + (hi - lo) * u[:, _FAC:_FAC + 4]
    perm, counts, coef, hue = ops.jitter_plan(factors, u[:, _ORD:_ORD + 4].argsort(1), u[:, _JIT] < c.p_jitter)
    u, p_blur, p_sol = u[perm], p_blur[perm], p_sol[perm]
    blur = (u[:, _BLUR] < p_blur).nonzero().flatten()
    sigma = c.blur_sigma[0] + (c.blur_sigma[1] - c.blur_sigma[0]) * u[blur, _SIGMA]
    return dict(rrc=u[:, _RRC], counts=counts, src=perm % B, flip=u[:, _FLIP] < 0.5, coef=coef, hue=hue,
                gray=(u[:, _GRAY] < c.p_gray).nonzero().flatten(), blur=blur, sigma=sigma,
                sol=(u[:, _SOL] < p_sol).nonzero().flatten(), inv=perm.argsort())


def _to_device(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Move small tensors to ``device`` in one copy (integers up to 2**24 survive exactly)."""
    move = [i for i, t in enumerate(tensors) if t.device != device]
    if not move:
        return tensors
    flat = torch.cat([tensors[i].reshape(-1).float() for i in move]).to(device, non_blocking=True)
    out = list(tensors)
    for i, part in zip(move, flat.split([tensors[i].numel() for i in move])):
        out[i] = part.view(tensors[i].shape).to(tensors[i].dtype)
    return out
