"""The evaluation suite of DINO: k-NN, linear probe, image retrieval, copy detection, video segmentation.

Every evaluation starts from a frozen backbone and ``extract_features``; the scoring functions
take plain tensors so that a training loop can call them on features it already has::

    train = extract_features(model, "cifar10/train", transform=EvalTransform(32, 32))
    test = extract_features(model, "cifar10/test", transform=EvalTransform(32, 32))
    knn_classify(train.features, train.labels, test.features, test.labels, k=20)  # {"top1": %, "top5": %}
"""

from .copydetect import GemEmbedding, PCAWhitening, copy_detection_map, evaluate_copy_detection
from .features import Embedding, Features, extract_features, load_features, load_official_dump
from .knn import DEFAULT_KS, knn_classify, knn_evaluate, knn_neighbors, knn_predict, knn_votes
from .linear import (LinearClassifier, LinearConfig, LinearResult, evaluate_classifier, load_classifier,
                     save_classifier, train_linear, train_linear_augmented)
from .retrieval import (MultiScale, average_precision, compute_map, evaluate_folders, evaluate_revisited,
                        load_gnd, rank_database, revisited_map)
from ..runtime import resolve_device, resolve_precision
from .videoseg import PropagationConfig, evaluate_davis, propagate_labels, segment_video

__all__ = [
    "Embedding", "Features", "extract_features", "load_features", "load_official_dump",
    "DEFAULT_KS", "knn_classify", "knn_evaluate", "knn_neighbors", "knn_predict", "knn_votes",
    "LinearClassifier", "LinearConfig", "LinearResult", "train_linear", "train_linear_augmented",
    "evaluate_classifier", "save_classifier", "load_classifier",
    "MultiScale", "average_precision", "compute_map", "revisited_map", "rank_database", "load_gnd",
    "evaluate_revisited", "evaluate_folders",
    "GemEmbedding", "PCAWhitening", "copy_detection_map", "evaluate_copy_detection",
    "PropagationConfig", "propagate_labels", "segment_video", "evaluate_davis",
    "resolve_device", "resolve_precision",
]
