"""k-NN accuracy of the teacher during training, on images decoded once and kept in memory."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..data import EvalTransform, ImageList, load_rgb
from ..data.folder import ImageDecodeError
from ..errors import DataError
from ..eval.features import class_index, extract_features
from ..eval.knn import knn_classify

__all__ = ["OnlineKNN", "decode_pair"]

log = logging.getLogger("dinokit.train")


def decode_pair(train_root: str, val_root: str, transform: EvalTransform
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every readable image of two class folders preprocessed, ``(train_x, train_y, val_x, val_y)``
    (images ``[N, 3, H, W]`` float), val labels matched to the train classes by folder name."""
    train, val = ImageList.from_folder(train_root), ImageList.from_folder(val_root)
    index = class_index(train.classes, val.classes, f"the k-NN train folder {train_root}")  # checked before decoding
    train_x, train_y = _decode(train, transform)
    val_x, val_y = _decode(val, transform)
    return train_x, train_y, val_x, index[val_y]


def _decode(images: ImageList, transform: EvalTransform) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for path, label in zip(images.paths, images.labels):
        try:
            xs.append(transform(load_rgb(path)))
            ys.append(label)
        except ImageDecodeError as e:
            log.warning("k-NN: skipping %s", e)
    if not xs:
        raise DataError(f"none of the {len(images.paths)} k-NN images could be decoded (e.g. {images.paths[0]})")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


class OnlineKNN:
    """Weighted k-NN (cosine, T = 0.07) of a backbone's class token, train folder -> val folder."""

    def __init__(self, train_path: str, val_path: str, image_size: int, k: int = 20):
        resize = image_size if image_size <= 64 else round(image_size * 256 / 224)
        transform = EvalTransform(resize=resize, crop=image_size)
        self.train_x, self.train_y, self.val_x, self.val_y = decode_pair(train_path, val_path, transform)
        self.k = k

    @torch.no_grad()
    def __call__(self, backbone: nn.Module) -> dict[str, float]:
        device = next(backbone.parameters()).device
        train = extract_features(backbone, self.train_x.to(device), batch_size=256)
        val = extract_features(backbone, self.val_x.to(device), batch_size=256)
        return knn_classify(train.features, self.train_y, val.features, self.val_y, k=self.k)
