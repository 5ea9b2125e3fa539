"""Linear probe on frozen features, with the recipe of DINO's ``eval_linear.py``.

One ``nn.Linear`` (no BatchNorm), weights ~ N(0, 0.01), zero bias; SGD with momentum 0.9 and no
weight decay; learning rate ``lr * batch_size / 256``, cosine-annealed to 0 over the epochs (one
step per epoch); cross-entropy. Two ways to feed it:

* ``train_linear`` (fast path): features extracted once (centre crops) and cached; each epoch
  shuffles the cached rows. Seconds per epoch even on a CPU.
* ``train_linear_augmented`` (the official path): every epoch decodes the training images with
  RandomResizedCrop + horizontal flip and runs them through the frozen backbone.

Both validate on cached features of the centre-cropped validation images and report top-1 and
top-5 accuracy in percent.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageList
from ..errors import ConfigError, DataError
from ..safe_load import load_tensors
from .features import EmbedFn, Embedding, Features, collate_images, embed_batch, ImageFileDataset, model_device
from ..runtime import autocast, resolve_precision, usable_workers
from .transforms import RandomResizedCropFlip

__all__ = ["LinearClassifier", "LinearConfig", "LinearResult", "train_linear", "train_linear_augmented",
           "evaluate_classifier", "save_classifier", "load_classifier"]

log = logging.getLogger(__name__)

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


class LinearClassifier(nn.Module):
    """``[B, D]`` features to ``[B, num_labels]`` logits; state dict ``linear.weight``, ``linear.bias``
    as in the release (whose files add a ``module.`` prefix, accepted by ``load_classifier``)."""

    def __init__(self, dim: int, num_labels: int = 1000, classes: Sequence[str] = ()):
        super().__init__()
        self.num_labels = num_labels
        self.classes = list(classes)  # the training class names, when known: matches val folders by name
        self.linear = nn.Linear(dim, num_labels)
        self.linear.weight.data.normal_(mean=0.0, std=0.01)
        self.linear.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


@dataclass
class LinearConfig:
    """Training recipe; ``lr`` is for a batch of 256 and scaled linearly with ``batch_size``.

    ``seed`` seeds torch's global generator (initialisation, augmentations) and the shuffling.
    """

    epochs: int = 100
    lr: float = 0.001
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 0.0
    val_freq: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.val_freq < 1:
            raise ConfigError("epochs, batch_size and val_freq must be positive")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")


@dataclass
class LinearResult:
    """The trained classifier, final and best validation accuracy (%), and one log row per epoch."""

    classifier: LinearClassifier
    top1: float
    top5: float
    best_top1: float
    history: list[dict] = field(default_factory=list)


@torch.no_grad()
def evaluate_classifier(classifier: nn.Module, feats: torch.Tensor, labels: torch.Tensor,
                        batch_size: int = 1024) -> dict[str, float]:
    """``{"top1", "top5", "loss"}`` of ``classifier`` on ``feats [N, D]``, ``labels [N]``; top-5 only
    when there are at least 5 classes."""
    classifier.eval()
    device = next(classifier.parameters()).device
    correct1 = correct5 = loss = 0.0
    n_cls = classifier(feats[:1].to(device)).shape[1]
    for i in range(0, len(feats), batch_size):
        x, y = feats[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        out = classifier(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        pred = out.topk(min(5, n_cls), dim=1).indices
        correct1 += (pred[:, 0] == y).sum().item()
        correct5 += (pred == y[:, None]).any(dim=1).sum().item()
    n = len(feats)
    out = {"top1": 100.0 * correct1 / n, "loss": loss / n}
    if n_cls >= 5:
        out["top5"] = 100.0 * correct5 / n
    return out


def _fit(batches: Batches, dim: int, num_classes: int, val: Features, config: LinearConfig,
         device: torch.device, on_epoch: Callable[[dict], None] | None, classes: Sequence[str]) -> LinearResult:
    """The training loop shared by both paths; ``batches(epoch)`` yields ``(features, labels)``."""
    torch.manual_seed(config.seed)
    classifier = LinearClassifier(dim, num_classes, [c for c in classes if c]).to(device)
    optimizer = torch.optim.SGD(classifier.parameters(), config.lr * config.batch_size / 256.0,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs, eta_min=0)
    history, best, stats = [], 0.0, {}
    for epoch in range(config.epochs):
        classifier.train()
        total, n = 0.0, 0
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        for x, y in batches(epoch):
            loss = F.cross_entropy(classifier(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, n = total + loss.item() * len(y), n + len(y)
        scheduler.step()
        row["train_loss"] = total / max(n, 1)
        if epoch % config.val_freq == 0 or epoch == config.epochs - 1:
            stats = evaluate_classifier(classifier, val.features, val.labels)
            best = max(best, stats["top1"])
            row.update({f"val_{k}": v for k, v in stats.items()})
        history.append(row)
        if on_epoch:
            on_epoch(row)
    return LinearResult(classifier, stats["top1"], stats.get("top5", float("nan")), best, history)


def _check(train_labels: torch.Tensor, val: Features, num_classes: int | None) -> int:
    if len(train_labels) == 0 or len(val) == 0:
        raise DataError("the linear probe needs training and validation images")
    found = int(max(train_labels.max(), val.labels.max())) + 1
    if num_classes is not None and num_classes < found:
        raise DataError(f"the data has {found} classes but --num_labels is {num_classes}: raise it or leave it out")
    n = num_classes or found
    if n < 2:
        raise DataError("the linear probe needs at least 2 classes (class sub-folders)")
    return n


def train_linear(train: Features, val: Features, config: LinearConfig | None = None, num_classes: int | None = None,
                 device: str | torch.device = "cpu",
                 on_epoch: Callable[[dict], None] | None = None) -> LinearResult:
    """Fast path: train on cached ``train.features [N, D]`` / ``train.labels [N]``, validate on ``val``.

    ``on_epoch(row)`` receives each epoch's log row (``epoch``, ``lr``, ``train_loss``, ``val_top1`` ...).
    """
    config = config or LinearConfig()
    n_cls = _check(train.labels, val, num_classes)
    gen = torch.Generator().manual_seed(config.seed)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(order), config.batch_size):
            idx = order[i:i + config.batch_size]
            yield train.features[idx], train.labels[idx]

    return _fit(batches, train.dim, n_cls, val, config, torch.device(device), on_epoch, train.classes)


def train_linear_augmented(model: nn.Module, train_images: ImageList, val: Features, image_size: int = 224,
                           config: LinearConfig | None = None, embed: EmbedFn | None = None,
                           num_classes: int | None = None, num_workers: int = 0, precision: str = "auto",
                           on_epoch: Callable[[dict], None] | None = None) -> LinearResult:
    """Official path: each epoch, random-resized ``image_size`` crops + flips of ``train_images`` go
    through the frozen ``model`` (on its device) and ``embed`` (default ``Embedding()``) under
    ``precision``; ``val`` holds validation features made with the same ``embed``."""
    config = config or LinearConfig()
    embed = embed or Embedding()
    n_cls = _check(torch.tensor(train_images.labels), val, num_classes)
    device = model_device(model)
    precision = resolve_precision(precision, device)
    model.eval()
    dataset = ImageFileDataset(train_images, RandomResizedCropFlip(image_size))

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=gen,
                                             num_workers=usable_workers(num_workers), collate_fn=collate_images)
        for x, y, _, bad in loader:
            for _, message in bad:
                log.warning("skipping image %s", message)
            if len(y):
                with torch.no_grad(), autocast(device, precision):
                    feats = embed_batch(model, embed, x, device)
                yield feats, y

    return _fit(batches, val.dim, n_cls, val, config, device, on_epoch, train_images.classes)


def save_classifier(path: str | os.PathLike, result: LinearResult, **meta) -> Path:
    """Write ``{"state_dict", "num_labels", "classes", "top1", "top5", "best_acc", "epoch", **meta}``
    (plain tensors and values, loadable with ``weights_only=True``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu() for k, v in result.classifier.state_dict().items()}
    torch.save({"state_dict": sd, "num_labels": result.classifier.num_labels,
                "classes": list(result.classifier.classes), "top1": result.top1,
                "top5": result.top5, "best_acc": result.best_top1, "epoch": len(result.history), **meta}, path)
    return path


def load_classifier(path: str | os.PathLike) -> LinearClassifier:
    """A classifier from ``save_classifier`` or the release's ``*_linearweights.pth`` files."""
    ckpt = load_tensors(path, DataError)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
    sd = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if "linear.weight" not in sd or "linear.bias" not in sd:
        raise DataError(f"{path} holds no linear.weight / linear.bias")
    num_labels, dim = sd["linear.weight"].shape
    classes = ckpt.get("classes") if isinstance(ckpt, dict) else None
    classifier = LinearClassifier(dim, num_labels, classes if isinstance(classes, list) else ())
    classifier.load_state_dict(sd)
    return classifier.eval()
