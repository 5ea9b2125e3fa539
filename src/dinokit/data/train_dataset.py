"""Training images as fixed-size uint8 canvases, decoded in DataLoader workers or once into memory.

Each image is decoded to RGB, shrunk (bicubic, antialiased) so that its longer side is at most
``canvas`` pixels -- never enlarged -- and pasted at the top-left of a zero ``[3, canvas, canvas]``
uint8 canvas; ``hw`` gives the valid height and width. Batches of canvases stack without any
per-image work, and the random crops of :class:`dinokit.augment.DINOMultiCrop` are taken inside
each valid region on the training device. ``canvas`` is e.g. 32 for CIFAR and 256 for
ImageNet-sized photos (crops of 224 and 96 are then taken from at most 256 x 256 pixels).

A file that cannot be decoded never stops training: :class:`TrainImageDataset` returns it with
``hw = (0, 0)``, :func:`collate_skip_bad` drops it and hands its index back in ``batch.bad``,
and :meth:`TrainImageDataset.report_bad` records it (with the reason) once in ``images.bad``.
DataLoader workers ignore SIGINT (:func:`ignore_sigint`): a Ctrl-C reaches the training process
alone, which finishes its step and writes a checkpoint instead of losing its workers mid-batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..errors import DinokitError
from ..safe_load import load_tensors
from .folder import ImageDecodeError, ImageList, load_rgb

__all__ = ["TrainBatch", "TrainImageDataset", "CachedImages", "collate_skip_bad", "to_canvas",
           "estimate_decoded_bytes", "ignore_sigint"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1


class TrainBatch(NamedTuple):
    """``images uint8 [B, 3, S, S]``, ``hw int32 [B, 2]``, ``labels long [B]``, ``index long [B]``
    (positions in the :class:`ImageList`), ``bad``: indices of the files dropped from this batch."""

    images: torch.Tensor
    hw: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    bad: list[int]


def to_canvas(im: Image.Image, canvas: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB image -> (``uint8 [3, canvas, canvas]``, ``int32 [2]`` valid height and width).

    The image is reduced (bicubic) to at most ``canvas`` pixels on its longer side, keeping its
    aspect ratio and at least one pixel on its shorter side; smaller images keep their size.
    """
    if max(im.size) > canvas:
        s = canvas / max(im.size)
        im = im.resize((max(1, min(canvas, round(im.width * s))), max(1, min(canvas, round(im.height * s)))),
                       Image.BICUBIC)
    a = np.asarray(im, dtype=np.uint8)
    h, w = a.shape[:2]
    out = torch.zeros(3, canvas, canvas, dtype=torch.uint8)
    out[:, :h, :w] = torch.from_numpy(a.transpose(2, 0, 1).copy())
    return out, torch.tensor([h, w], dtype=torch.int32)


class TrainImageDataset(Dataset):
    """``ds[i]`` -> ``(canvas uint8 [3, S, S], hw int32 [2], label, i)``; ``hw = (0, 0)`` marks a bad file."""

    def __init__(self, images: ImageList, canvas: int):
        if canvas < 1:
            raise ValueError(f"canvas must be a positive size, got {canvas}")
        self.images, self.canvas = images, int(canvas)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        label = int(self.images.labels[i])
        try:
            im = load_rgb(self.images.paths[i], max_side=2 * self.canvas)
        except ImageDecodeError as e:
            log.debug("skipping undecodable image: %s", e)
            return (torch.zeros(3, self.canvas, self.canvas, dtype=torch.uint8),
                    torch.zeros(2, dtype=torch.int32), label, i)
        canvas, hw = to_canvas(im, self.canvas)
        return canvas, hw, label, i

    def report_bad(self, indices, log_each: bool = True) -> list[str]:
        """Record the files at ``indices`` (from ``batch.bad``) in ``images.bad``, each once, with
        the reason, logging a warning for each new one (``log_each=False``: at debug level, for a
        caller that reports them together). Returns the newly recorded paths."""
        return _record_bad(self.images, indices, log_each)


def ignore_sigint(_worker_id: int = 0) -> None:
    """``worker_init_fn`` of DataLoaders: the main process alone handles Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _record_bad(images: ImageList, indices, log_each: bool = True) -> list[str]:
    new = []
    for i in indices:
        path = str(images.paths[int(i)])
        if path in images.bad:
            continue
        try:  # decoding failed in a worker: decode once more here for the message
            load_rgb(path)
            reason = "could not be decoded"
        except ImageDecodeError as e:
            reason = str(e).removeprefix(f"{path}: ")
        images.bad[path] = reason
        log.log(logging.WARNING if log_each else logging.DEBUG, "skipping unusable image %s (%s)", path, reason)
        new.append(path)
    return new


def collate_skip_bad(batch: list) -> TrainBatch:
    """Stack ``TrainImageDataset`` samples, dropping those marked bad (``hw == 0``).

    A batch of only bad files gives empty tensors (``B = 0``) and their indices in ``bad``.
    """
    good = [s for s in batch if int(s[1][0]) > 0]
    bad = [int(s[3]) for s in batch if int(s[1][0]) <= 0]
    if not good:
        side = batch[0][0].shape[-1] if batch else 0
        return TrainBatch(torch.zeros(0, 3, side, side, dtype=torch.uint8), torch.zeros(0, 2, dtype=torch.int32),
                          torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), bad)
    return TrainBatch(torch.stack([s[0] for s in good]), torch.stack([s[1] for s in good]),
                      torch.tensor([s[2] for s in good], dtype=torch.long),
                      torch.tensor([s[3] for s in good], dtype=torch.long), bad)


def estimate_decoded_bytes(n_images: int, canvas: int) -> int:
    """Bytes that :class:`CachedImages` needs for ``n_images`` canvases (with hw, label, index)."""
    return int(n_images) * (3 * int(canvas) ** 2 + 2 * 4 + 8 + 8)


class CachedImages:
    """Every image decoded once into ``images uint8 [N, 3, S, S]`` (+ ``hw [N, 2]``, ``labels [N]``,
    ``index [N]`` = position in the :class:`ImageList`); unusable files are left out and listed in
    ``bad`` (path -> reason).

    ``cache_file``: a ``.pt`` file to load from when it holds the same files and canvas size, and
    to write after decoding otherwise. ``progress(done, total)`` is called while decoding, which
    runs in ``num_workers`` DataLoader worker processes (0: in this process).
    """

    def __init__(self, images: ImageList, canvas: int, num_workers: int = 0,
                 progress: Callable[[int, int], None] | None = None,
                 cache_file: str | os.PathLike | None = None, decode_batch: int = 256):
        self.canvas = int(canvas)
        self.key = cache_key(images.paths, self.canvas)
        self.bad: dict[str, str] = {}
        if cache_file is not None and self._load(cache_file, images):
            return
        log.info("decoding %d images once into memory (%dx%d canvases)", len(images), self.canvas, self.canvas)
        self._decode(images, num_workers, progress, decode_batch)
        if cache_file is not None:
            self.save(cache_file)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.images, self.hw, self.labels, self.index))

    def _decode(self, images: ImageList, num_workers: int, progress, decode_batch: int) -> None:
        n, s = len(images), self.canvas
        self.images = torch.empty(n, 3, s, s, dtype=torch.uint8)
        self.hw = torch.empty(n, 2, dtype=torch.int32)
        self.labels = torch.empty(n, dtype=torch.long)
        self.index = torch.empty(n, dtype=torch.long)
        loader = DataLoader(TrainImageDataset(images, s), batch_size=decode_batch, shuffle=False,
                            num_workers=num_workers, collate_fn=collate_skip_bad,
                            worker_init_fn=ignore_sigint if num_workers > 0 else None)
        pos = done = 0
        bad = []
        for batch in loader:  # in file order; good images are packed at the front
            k = batch.images.shape[0]
            for name in ("images", "hw", "labels", "index"):
                getattr(self, name)[pos:pos + k] = getattr(batch, name)
            pos, done = pos + k, done + k + len(batch.bad)
            bad += batch.bad
            if progress is not None:
                progress(done, n)
        if pos < n:  # drop the unused tail (a copy only when some files were bad)
            for name in ("images", "hw", "labels", "index"):
                setattr(self, name, getattr(self, name)[:pos].clone())
        _record_bad(images, bad, log_each=False)
        self.bad = {p: images.bad[p] for p in (str(images.paths[i]) for i in bad)}

    def save(self, path: str | os.PathLike) -> None:
        """Write the cache atomically (tensors and strings only, loadable with ``weights_only``).

        The cache only saves time: a failed write (disk full, read-only folder) is a warning."""
        path = Path(path)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                torch.save({"version": CACHE_VERSION, "key": self.key, "canvas": self.canvas, "images": self.images,
                            "hw": self.hw, "labels": self.labels, "index": self.index, "bad": dict(self.bad)}, f)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
            log.warning("could not write the image cache %s (%s); it will be decoded again next time",
                        path, getattr(e, "strerror", None) or e)
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def _load(self, path: str | os.PathLike, images: ImageList) -> bool:
        if not Path(path).is_file():
            return False
        try:
            d = load_tensors(path)
        except DinokitError as e:  # unreadable or truncated: decode again and overwrite it
            log.warning("ignoring unreadable image cache: %s", e)
            return False
        if not isinstance(d, dict) or d.get("version") != CACHE_VERSION or d.get("key") != self.key:
            log.info("image cache %s is for other files or another canvas size; decoding again", path)
            return False
        self.images, self.hw, self.labels, self.index = d["images"], d["hw"], d["labels"], d["index"]
        self.bad = dict(d["bad"])
        images.bad.update(self.bad)
        log.info("loaded %d decoded images from %s", len(self), path)
        return True

    def to(self, device: torch.device | str) -> "CachedImages":
        """Move the tensors (e.g. to the GPU, so that batches never cross the bus)."""
        for name in ("images", "hw", "labels", "index"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def num_batches(self, batch_size: int, drop_last: bool = True, world_size: int = 1) -> int:
        per_rank = _per_rank(len(self), world_size, drop_last)
        return per_rank // batch_size if drop_last else -(-per_rank // batch_size)

    def batches(self, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = True,
                rank: int = 0, world_size: int = 1) -> Iterator[TrainBatch]:
        """One epoch of shuffled batches for ``rank`` of ``world_size``.

        Every rank draws the same permutation from ``generator`` (seed it identically on every
        rank, e.g. ``seed + epoch``) and takes every ``world_size``-th entry from position
        ``rank``, so the ranks' shards are disjoint and equally long. ``drop_last`` drops the
        samples that do not fill a last batch (and the ``N % world_size`` left over); otherwise
        the permutation wraps around so that every image is seen and every rank gets as many.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        n = len(self)
        perm = torch.randperm(n, generator=generator)
        total = _per_rank(n, world_size, drop_last) * world_size
        if total > n:
            perm = perm.repeat(-(-total // n))
        mine = perm[:total][rank::world_size]
        stop = len(mine) - len(mine) % batch_size if drop_last else len(mine)
        for start in range(0, stop, batch_size):
            idx = mine[start:start + batch_size].to(self.images.device)
            yield TrainBatch(self.images.index_select(0, idx), self.hw.index_select(0, idx),
                             self.labels.index_select(0, idx), self.index.index_select(0, idx), [])


def _per_rank(n: int, world_size: int, drop_last: bool) -> int:
    return n // world_size if drop_last else -(-n // world_size)


def cache_key(paths, canvas: int) -> str:
    """Digest of the file list (in order) and canvas size that a cache file must match."""
    h = hashlib.sha256(f"dinokit-canvas-v{CACHE_VERSION}:{int(canvas)}\n".encode())
    for p in paths:
        h.update(os.fsencode(str(p)) + b"\n")
    return h.hexdigest()
