"""Batched feature extraction through a frozen backbone, and feature files (.pt / .npz).

``extract_features(model, images)`` accepts an image folder, an ``ImageList``, a list of image
files, an image tensor ``[N, 3, H, W]`` or any iterable of batches (a ``DataLoader``), and returns
``Features``: one row per image, with labels and file paths. Images that cannot be decoded are
skipped with a logged warning. The vector of an image is built by an ``Embedding``: the class
token, optionally concatenated over the last blocks and with average-pooled patch tokens.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..data import EvalTransform, ImageDecodeError, ImageList, load_rgb
from ..errors import ConfigError, DataError, InputShapeError
from ..safe_load import load_tensors
from ..runtime import autocast, resolve_precision, usable_workers

__all__ = ["Embedding", "Features", "align_classes", "check_classes", "class_index", "extract_features",
           "load_features", "load_official_dump", "ImageFileDataset", "collate_images", "embed_batch", "model_device"]

log = logging.getLogger(__name__)

EmbedFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Embedding:
    """Image batch ``[B, 3, H, W]`` to vectors ``[B, D']``, as the official linear evaluation builds them.

    ViT: the class tokens of the last ``n_last_blocks`` blocks concatenated (``D' = n * D``); with
    ``avgpool_patchtokens`` the mean patch token of the last block is added (``D' = (n + 1) * D``).
    For ``n_last_blocks == 1`` the two are interleaved element by element, exactly as the release
    does, so that its published linear weights apply; for ``n > 1`` (which the release cannot do)
    the average comes last. Networks without ``get_intermediate_layers`` (ResNet) give ``model(x)``.
    """

    n_last_blocks: int = 1
    avgpool_patchtokens: bool = False

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        simple = self.n_last_blocks == 1 and not self.avgpool_patchtokens
        if simple or not hasattr(model, "get_intermediate_layers"):
            return model(x)
        blocks = model.get_intermediate_layers(x, self.n_last_blocks)
        if len(blocks) < self.n_last_blocks:  # the release silently took all blocks
            raise ConfigError(f"--n_last_blocks {self.n_last_blocks} exceeds the {len(blocks)} blocks of the network")
        out = torch.cat([b[:, 0] for b in blocks], dim=-1)
        if self.avgpool_patchtokens:
            avg = blocks[-1][:, 1:].mean(dim=1)
            if self.n_last_blocks == 1:
                return torch.stack((out, avg), dim=-1).flatten(1)
            out = torch.cat((out, avg), dim=-1)
        return out


@dataclass
class Features:
    """``features [N, D]`` float32 on CPU, ``labels [N]`` int64, and per-row ``paths``.

    ``classes`` names the labels (``[""]`` for unlabelled folders); ``skipped`` maps the files
    that could not be decoded to the reason.
    """

    features: torch.Tensor
    labels: torch.Tensor
    paths: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):  # NumPy arrays or lists, e.g. features computed elsewhere
        self.features = torch.as_tensor(self.features, dtype=torch.float32)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.features.ndim != 2 or len(self.labels) != len(self.features):
            raise DataError(f"features must be [N, D] with N labels, got features {tuple(self.features.shape)} "
                            f"and {len(self.labels)} labels")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``.npz`` (numpy, no pickle) or ``.pt`` (torch, loadable with ``weights_only``)."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".npz":
                np.savez(path, features=self.features.numpy(), labels=self.labels.numpy(),
                         paths=np.array(self.paths, dtype=str), classes=np.array(self.classes, dtype=str))
            else:
                torch.save({"features": self.features, "labels": self.labels, "paths": list(self.paths),
                            "classes": list(self.classes)}, path)
        except OSError as e:  # disk full, read-only folder: one line, not a traceback
            raise DataError(f"could not write features to {path}: {e.strerror or e}") from None
        return path


def check_classes(train_classes: Sequence[str], val_classes: Sequence[str], train_name: str = "the train folder"
                  ) -> None:
    """``DataError`` unless the train images have at least 2 classes (sub-folder names; with one,
    every vote is right and 100% says nothing) and every val class is one of them."""
    named = [c for c in train_classes if c]
    if len(named) < 2:
        raise DataError(f"{train_name} needs class sub-folders (<dir>/<class>/*.jpg), at least 2, to score "
                        f"features by their labels; it has {len(named)}")
    if "" in train_classes or "" in val_classes:
        raise DataError("train and val folders need the same layout: class sub-folders in both, or in neither")
    missing = [c for c in val_classes if c not in train_classes]
    if missing:
        raise DataError(f"val classes without a train folder: {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}; a classifier can only predict the train classes")


def align_classes(train_classes: Sequence[str], val: Features) -> Features:
    """``val`` with its labels renumbered to the train class indices, matched by class name.

    Labels come from sorted sub-folder names in each folder, so a val folder with fewer classes
    than train would otherwise give its images the labels of other classes.
    """
    if not train_classes or not val.classes or list(train_classes) == list(val.classes):
        return val
    log.info("val has %d of the %d train classes: labels matched by class name", len(val.classes), len(train_classes))
    return dataclasses.replace(val, labels=class_index(train_classes, val.classes)[val.labels],
                               classes=list(train_classes))


def class_index(train_classes: Sequence[str], val_classes: Sequence[str], train_name: str = "the train folder"
                ) -> torch.Tensor:
    """``[len(val_classes)]``: the train label of each val class, matched by name (checked)."""
    check_classes(train_classes, val_classes, train_name)
    return torch.tensor([list(train_classes).index(c) for c in val_classes], dtype=torch.long)


def load_features(path: str | os.PathLike) -> Features:
    """Read a file written by ``Features.save`` (``.pt`` / ``.pth`` or ``.npz``), safely."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"feature file {str(path)!r} does not exist")
    d = _load_npz(path) if path.suffix == ".npz" else load_tensors(path, DataError)
    if isinstance(d, torch.Tensor):  # a bare matrix, like the release's trainfeat.pth
        d = {"features": d}
    if not isinstance(d, dict) or "features" not in d:
        raise DataError(f"{path} holds no 'features' entry")
    feats, labels = d["features"], d.get("labels")
    try:
        labels = torch.zeros(len(feats), dtype=torch.long) if labels is None else labels
        return Features(feats, labels, list(d.get("paths", [])), list(d.get("classes", [])))
    except (DataError, TypeError, ValueError, RuntimeError) as e:  # not numbers, or shapes that do not match
        raise DataError(f"{path}: {e}") from None


def _load_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        return {"features": torch.from_numpy(d["features"]), "labels": torch.from_numpy(d["labels"]),
                "paths": d.get("paths", np.array([])).tolist(), "classes": d.get("classes", np.array([])).tolist()}
    except Exception as e:  # numpy raises many types for a damaged file
        raise DataError(f"cannot read feature file {path}: {type(e).__name__}: {e}") from None


def load_official_dump(directory: str | os.PathLike) -> tuple[Features, Features]:
    """``(train, test)`` from a folder written by the release's ``eval_knn.py --dump_features``
    (``trainfeat.pth``, ``testfeat.pth``, ``trainlabels.pth``, ``testlabels.pth``)."""
    directory = Path(directory)
    out = []
    for split in ("train", "test"):
        feats, labels = (_load_tensor(directory / f"{split}{kind}.pth") for kind in ("feat", "labels"))
        if feats.ndim != 2 or labels.numel() != len(feats):
            raise DataError(f"{directory}: {split}feat.pth {tuple(feats.shape)} and {split}labels.pth "
                            f"{tuple(labels.shape)} do not match")
        out.append(Features(feats.float(), labels.view(-1).long()))
    return out[0], out[1]


def _load_tensor(path: Path) -> torch.Tensor:
    t = load_tensors(path, DataError)
    if not isinstance(t, torch.Tensor):
        raise DataError(f"{path} holds a {type(t).__name__}, not a tensor")
    return t


@torch.no_grad()
def extract_features(model: nn.Module, images, embed: EmbedFn | None = None, transform=None, *,
                     batch_size: int = 64, num_workers: int = 0, precision: str = "auto",
                     progress: Progress | None = None, distributed: bool = False) -> Features:
    """Features of ``images`` through ``model`` (run on the model's device, in eval mode).

    ``images``: a folder (class sub-folders give labels), an ``ImageList``, a sequence of image
    files, a normalised tensor ``[N, 3, H, W]``, or an iterable yielding tensors ``[B, 3, H, W]``
    or ``(images, labels, ...)`` tuples, such as a ``DataLoader``. Files are decoded and mapped by
    ``transform`` (default ``EvalTransform(256, 224)``); batches whose images differ in size are
    run image by image. ``embed(model, x) -> [B, D]`` defaults to ``Embedding()`` (class token).
    ``precision`` ``"bf16"`` runs the network under bf16 autocast (``"auto"``: on a CPU with bf16
    units). Features are returned in float32 on the CPU; ``progress(done, total)`` is called after each batch.
    With ``distributed`` and an initialised process group (torchrun), the image files are split
    across the processes and every process returns all rows, in the same order as one process would.
    """
    embed = embed or Embedding()
    device = model_device(model)
    precision = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    try:
        with autocast(device, precision):
            if isinstance(images, torch.Tensor):
                return _from_batches(model, embed, _tensor_batches(images, batch_size), len(images), progress)
            if isinstance(images, (str, os.PathLike, ImageList)) or _is_path_list(images):
                return _from_files(model, embed, _as_image_list(images), transform or EvalTransform(256, 224),
                                   batch_size, num_workers, progress, distributed)
            total = len(images.dataset) if hasattr(images, "dataset") else 0
            return _from_batches(model, embed, images, total, progress)
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _is_path_list(x) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, (str, bytes)) and all(
        isinstance(p, (str, os.PathLike)) for p in x)


def _as_image_list(images) -> ImageList:
    if isinstance(images, ImageList):
        return images
    if isinstance(images, (str, os.PathLike)):
        return ImageList.from_folder(images)
    paths = [Path(p) for p in images]
    if not paths:
        raise DataError("no images given")
    return ImageList(paths, [0] * len(paths), [""], Path(os.path.commonpath([str(p.parent) for p in paths])))


def _tensor_batches(x: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size]


def embed_batch(model: nn.Module, embed: EmbedFn, images, device: torch.device) -> torch.Tensor:
    """Float features ``[B, D]`` of ``images``: a tensor ``[B, 3, H, W]`` or a list of ``[3, H, W]``
    of different sizes (run one by one)."""
    if isinstance(images, torch.Tensor):
        return embed(model, images.to(device, non_blocking=True)).float()
    return torch.cat([embed(model, im.unsqueeze(0).to(device)).float() for im in images])


def _from_batches(model, embed, batches, total: int, progress) -> Features:
    device = model_device(model)
    feats, labels, done = [], [], 0
    for batch in batches:
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        f = embed_batch(model, embed, x, device).cpu()
        feats.append(f)
        ok_labels = isinstance(y, torch.Tensor) and y.ndim == 1 and len(y) == len(f)
        labels.append(y.long().cpu() if ok_labels else torch.zeros(len(f), dtype=torch.long))
        done += len(f)
        if progress and total:
            progress(done, total)
    if not feats:
        raise DataError("no images to extract features from")
    return Features(torch.cat(feats), torch.cat(labels))


class ImageFileDataset(torch.utils.data.Dataset):
    """Item ``i``: ``(image [3, H, W] or None, label, i, error message)``; an image whose side comes
    out of ``transform`` under ``min_side`` (the network's patch) is skipped like an unreadable one."""

    def __init__(self, images: ImageList, transform, min_side: int = 1):
        self.images, self.transform, self.min_side = images, transform, min_side

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        path, label = self.images.paths[i], self.images.labels[i]
        try:
            image = self.transform(load_rgb(path))
        except ImageDecodeError as e:
            return None, label, i, str(e)
        if min(image.shape[-2:]) < self.min_side:
            h, w = image.shape[-2:]
            return None, label, i, f"{path}: {w}x{h} px after resizing, under the network's {self.min_side} px patch"
        return image, label, i, ""


def collate_images(items):
    """Stack the decodable images (a list when their sizes differ); report the others."""
    good = [it for it in items if it[0] is not None]
    bad = [(it[2], it[3]) for it in items if it[0] is None]
    images = [it[0] for it in good]
    if images and all(im.shape == images[0].shape for im in images):
        images = torch.stack(images)
    labels = torch.tensor([it[1] for it in good], dtype=torch.long)
    index = torch.tensor([it[2] for it in good], dtype=torch.long)
    return images, labels, index, bad


def _from_files(model, embed, images: ImageList, transform, batch_size: int, num_workers: int,
                progress, distributed: bool = False) -> Features:
    device = model_device(model)
    dataset = ImageFileDataset(images, transform, _patch_side(model))
    world = dist.get_world_size() if distributed and dist.is_available() and dist.is_initialized() else 1
    if world > 1:  # process r takes images r, r + world, ...
        dataset = torch.utils.data.Subset(dataset, range(dist.get_rank(), len(images), world))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False,
        num_workers=usable_workers(num_workers), collate_fn=collate_images, pin_memory=device.type == "cuda",
        persistent_workers=False)
    feats, labels, index, done = [], [], [], 0
    for x, y, idx, bad in loader:
        for i, message in bad:
            log.warning("skipping image %s", message)
            images.bad[str(images.paths[i])] = message
        if len(idx):
            feats.append(embed_batch(model, embed, x, device).cpu())
            labels.append(y)
            index.append(idx)
        done += len(idx) + len(bad)
        if progress:
            progress(done, len(dataset))
    feats, labels, index = (torch.cat(feats), torch.cat(labels), torch.cat(index)) if feats else (
        torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    if world > 1:
        feats, labels, index = _gather_rows(feats, labels, index, images.bad)
    if not len(index):
        raise DataError(f"none of the {len(images)} images below {images.root} could be decoded")
    return Features(feats, labels, [str(images.paths[i]) for i in index.tolist()],
                    list(images.classes), dict(images.bad))


def _patch_side(model: nn.Module) -> int:
    """The smallest image side ``model`` takes: its patch size (1 for a ResNet)."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", 1)
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)


def check_image_size(model: nn.Module, size: int, flag: str) -> None:
    """Refuse an image size under the network's patch before any image is read (rather than
    skipping every image one by one)."""
    if size < (patch := _patch_side(model)):
        raise InputShapeError(f"{flag} {size} is smaller than the {patch} px patch: every image would be "
                              f"under one patch; use at least {patch}")


def _gather_rows(feats: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, bad: dict[str, str]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All processes' ``(features [N, D], labels [N], image index [N])``, sorted by image index, on
    every process; ``bad`` gains the files the others could not read."""
    world = dist.get_world_size()
    meta: list = [None] * world
    dist.all_gather_object(meta, (len(index), feats.shape[1], dict(bad)))
    for _, _, their_bad in meta:
        bad.update(their_bad)
    counts, dim = [m[0] for m in meta], max(m[1] for m in meta)
    # NCCL moves CUDA tensors only, also for a model run on the CPU (--use_cuda false); gloo CPU ones.
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    def gather(rows: torch.Tensor, width: int) -> torch.Tensor:
        buf = torch.zeros(max(counts), width, dtype=rows.dtype, device=comm)
        if len(rows):
            buf[:len(rows)] = rows.to(comm)
        parts = [torch.empty_like(buf) for _ in range(world)]
        dist.all_gather(parts, buf)  # equal shapes: each process pads its rows to the largest count
        return torch.cat([p[:n] for p, n in zip(parts, counts)]).cpu()

    all_feats = gather(feats, dim)
    labels_index = gather(torch.stack((labels, index), dim=1), 2)
    order = labels_index[:, 1].argsort()
    return all_feats[order], labels_index[order, 0], labels_index[order, 1]
