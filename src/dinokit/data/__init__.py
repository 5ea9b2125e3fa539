"""Data: image folders, robust decoding, evaluation preprocessing."""

from .folder import IMG_EXTENSIONS, ImageDecodeError, ImageList, class_folders, find_images, load_rgb
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, normalize, pil_to_uint8
from .train_dataset import (CachedImages, TrainBatch, TrainImageDataset, collate_skip_bad, estimate_decoded_bytes,
                            to_canvas)

__all__ = ["IMG_EXTENSIONS", "ImageDecodeError", "ImageList", "class_folders", "find_images", "load_rgb",
           "IMAGENET_MEAN", "IMAGENET_STD", "EvalTransform", "normalize", "pil_to_uint8",
           "CachedImages", "TrainBatch", "TrainImageDataset", "collate_skip_bad", "estimate_decoded_bytes", "to_canvas"]
