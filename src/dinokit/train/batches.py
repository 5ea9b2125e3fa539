"""Batches for training: uint8 image canvases from memory or from DataLoader workers, and the
multi-crop views made from them on the training device."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from ..augment import DINOMultiCrop
from ..data import ImageList
from ..data.train_dataset import (CachedImages, TrainImageDataset, collate_skip_bad, estimate_decoded_bytes,
                                  ignore_sigint)
from ..errors import ConfigError, DataError
from ..runtime import usable_workers

__all__ = ["TrainBatches"]

log = logging.getLogger("dinokit.train")


def _total_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class _ShardSampler(torch.utils.data.Sampler):
    """This rank's slice of one seeded permutation per epoch, from ``skip`` batches on."""

    def __init__(self, n: int, batch: int, rank: int, world: int, seed: int):
        self.n, self.batch, self.rank, self.world, self.seed = n, batch, rank, world, seed
        self.epoch, self.skip = 0, 0

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        per_rank = (self.n // (self.batch * self.world)) * self.batch
        mine = perm[self.rank * per_rank:(self.rank + 1) * per_rank]
        return iter(mine[self.skip * self.batch:].tolist())

    def __len__(self):
        return (self.n // (self.batch * self.world)) * self.batch - self.skip * self.batch


class TrainBatches:
    """``epoch(e, skip)`` yields ``(images uint8 [B, 3, S, S], hw [B, 2])`` on the device;
    ``views(images, hw, it)`` turns them into the 2 + N normalised crops of DINO."""

    def __init__(self, cfg, dist_info, device: torch.device):
        self.cfg, self.dist, self.device = cfg, dist_info, device
        # A run's output (report PNGs) inside its data folder must not become training images on resume.
        self.images = ImageList.from_folder(cfg.data_path, exclude=[cfg.output_dir])
        self.workers = usable_workers(cfg.num_workers)
        self.num_images = len(self.images)
        per_step = cfg.batch_size_per_gpu * dist_info.world_size
        if per_step > self.num_images:
            raise ConfigError(f"batch of {per_step} images ({cfg.batch_size_per_gpu} per process x "
                              f"{dist_info.world_size}) is larger than the {self.num_images} images in "
                              f"{cfg.data_path}; lower --batch_size_per_gpu")
        # Room for crops of 224 from ~256 px images; small images (CIFAR) are never enlarged.
        g = cfg.global_crops_size
        self.canvas = cfg.canvas_size or (round(g * 256 / 224) if g >= 128 else g)
        self.augment = DINOMultiCrop(
            global_crops_scale=tuple(cfg.global_crops_scale), local_crops_scale=tuple(cfg.local_crops_scale),
            local_crops_number=cfg.local_crops_number, global_size=cfg.global_crops_size,
            local_size=cfg.local_crops_size, blur_sigma=tuple(cfg.blur_sigma),
            jitter=tuple(cfg.color_jitter * s for s in (0.4, 0.4, 0.2, 0.1)), p_jitter=cfg.p_color_jitter,
            p_gray=cfg.p_grayscale, p_blur=tuple(cfg.p_blur), p_solarize=cfg.p_solarize)
        self.cached = self._build_cache() if self._want_cache() else None
        self._sizes_checked = False
        if self.cached is None:
            self.dataset = TrainImageDataset(self.images, self.canvas)
            self.sampler = _ShardSampler(self.num_images, cfg.batch_size_per_gpu, dist_info.rank,
                                         dist_info.world_size, cfg.seed)
        elif len(self.cached) < per_step:
            raise DataError(f"only {len(self.cached)} of the {self.num_images} files in {cfg.data_path!r} are "
                            f"usable images, fewer than one batch of {per_step}; the others cannot be decoded "
                            f"(e.g. {_first_bad(self.cached.bad)})")

    @property
    def usable_images(self) -> int:
        """Images that decode (all files found until the first epoch tells, without the cache)."""
        return len(self.cached.labels) if self.cached is not None else self.num_images

    def __len__(self) -> int:
        return self.usable_images // (self.cfg.batch_size_per_gpu * self.dist.world_size)

    def bad_files(self) -> dict[str, str]:
        """Files found unusable so far (path -> reason), by any process of the run. With the
        DataLoader this is a collective: every process must call it at the same point."""
        if self.cached is not None or not self.dist.enabled:
            return dict(self.images.bad)
        gathered: list = [None] * self.dist.world_size
        dist.all_gather_object(gathered, dict(self.images.bad))
        return {p: r for part in gathered for p, r in part.items()}

    def _want_cache(self) -> bool:
        if self.cfg.cache == "yes":
            return True
        if self.cfg.cache == "no":
            return False
        return estimate_decoded_bytes(self.num_images, self.canvas) <= _total_ram() // 4

    def _build_cache(self) -> CachedImages:
        cache_file = os.path.join(self.cfg.output_dir, f"decoded_{self.canvas}.pt")
        cache = CachedImages(self.images, self.canvas, num_workers=self.workers, cache_file=cache_file)
        return cache.to(self.device) if self.device.type == "cuda" else cache

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.cfg
        if self.cached is not None:
            g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            batches = self.cached.batches(cfg.batch_size_per_gpu, g, drop_last=True, rank=self.dist.rank,
                                          world_size=self.dist.world_size)
            for i, batch in enumerate(batches):
                images, hw = batch.images, batch.hw
                self._check_sizes(hw)
                if i >= skip:
                    yield images.to(self.device, non_blocking=True), hw.to(self.device, non_blocking=True)
            return
        self.sampler.epoch, self.sampler.skip = epoch, skip
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=cfg.batch_size_per_gpu, sampler=self.sampler, num_workers=self.workers,
            collate_fn=collate_skip_bad, pin_memory=self.device.type == "cuda", drop_last=True,
            persistent_workers=False, prefetch_factor=4 if self.workers > 0 else None,
            worker_init_fn=ignore_sigint if self.workers > 0 else None)
        for images, hw, _labels, _index, bad in loader:
            if bad:
                self.dataset.report_bad(bad, log_each=False)  # reported together by the trainer
            if images.shape[0] == 0:
                continue
            self._check_sizes(hw)
            yield images.to(self.device, non_blocking=True), hw.to(self.device, non_blocking=True)

    def _check_sizes(self, hw: torch.Tensor) -> None:
        """Warn once when the images are far smaller than the global crops (CIFAR at 224 px)."""
        if self._sizes_checked:
            return
        self._sizes_checked = True
        side = int(hw.max(dim=1).values.float().median())
        if side * 2 <= self.cfg.global_crops_size and self.dist.rank == 0:
            log.warning("the images are small (median longer side %d px) for %d px global crops: each crop is "
                        "enlarged %.0fx, which costs compute and adds no detail; for small images use "
                        "--preset cifar or lower --global_crops_size and --local_crops_size",
                        side, self.cfg.global_crops_size, self.cfg.global_crops_size / max(side, 1))

    def step_seed(self, it: int) -> int:
        """Random seed of iteration ``it`` on this rank: runs are reproducible across resumes."""
        return (self.cfg.seed * 1_000_003 + it) * 131 + self.dist.rank

    def views(self, images: torch.Tensor, hw: torch.Tensor, seed: int, global_size: int | None = None,
              global_scale: tuple[float, float] | None = None) -> list[torch.Tensor]:
        """Multi-crop views ``[B, 3, g, g] x 2 + [B, 3, l, l] x N``, reproducible from ``seed``;
        ``g`` is ``global_size`` when given (progressive resizing), else the configured size, and
        ``global_scale`` the global crops' area range when given (crop curriculum)."""
        return self.augment(images, hw, torch.Generator().manual_seed(seed), global_size=global_size,
                            global_scale=global_scale)


def _first_bad(bad: dict[str, str]) -> str:
    return next((f"{p}: {r}" for p, r in sorted(bad.items())), "none listed")
