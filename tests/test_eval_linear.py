"""Linear probe: the official recipe (init, lr scaling, cosine schedule), convergence, files, CIFAR."""

from __future__ import annotations

import math

import pytest
import torch

from dinokit.data import EvalTransform, ImageList
from dinokit.errors import ConfigError, DataError
from dinokit.eval.features import Embedding, Features, extract_features
from dinokit.eval.linear import (LinearClassifier, LinearConfig, evaluate_classifier, load_classifier,
                                 save_classifier, train_linear, train_linear_augmented)
from dinokit.models import vit_tiny


def separable(n_train=400, n_val=200, dim=32, classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 4
    def make(n):
        y = torch.arange(n) % classes
        return Features(centers[y] + torch.randn(n, dim, generator=g), y)
    return make(n_train), make(n_val)


def test_classifier_init_matches_the_release():
    torch.manual_seed(0)
    clf = LinearClassifier(384 * 4, 1000)
    assert set(clf.state_dict()) == {"linear.weight", "linear.bias"}
    assert clf.linear.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert clf.linear.bias.abs().max().item() == 0.0
    assert clf(torch.randn(2, 4, 384)).shape == (2, 1000)  # flattens its input


def test_separable_features_reach_full_accuracy():
    train, val = separable()
    res = train_linear(train, val, LinearConfig(epochs=20, lr=1.0, batch_size=64))
    assert res.top1 == 100.0 and res.top5 == 100.0 and res.best_top1 == 100.0
    assert len(res.history) == 20
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_learning_rate_is_scaled_and_cosine_annealed():
    train, val = separable(n_train=64, n_val=12)
    cfg = LinearConfig(epochs=8, lr=0.001, batch_size=128, val_freq=3)
    res = train_linear(train, val, cfg)
    base = 0.001 * 128 / 256
    for row in res.history:
        assert row["lr"] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * row["epoch"] / 8)))
    validated = [row["epoch"] for row in res.history if "val_top1" in row]
    assert validated == [0, 3, 6, 7]  # every val_freq epochs and the last


def test_training_is_reproducible_with_a_seed():
    train, val = separable()
    a = train_linear(train, val, LinearConfig(epochs=3, lr=0.1, seed=5)).classifier.linear.weight
    b = train_linear(train, val, LinearConfig(epochs=3, lr=0.1, seed=5)).classifier.linear.weight
    torch.testing.assert_close(a, b)


def test_evaluate_top5_needs_five_classes():
    train, val = separable(classes=3)
    res = train_linear(train, val, LinearConfig(epochs=5, lr=1.0))
    stats = evaluate_classifier(res.classifier, val.features, val.labels)
    assert "top5" not in stats and stats["top1"] == 100.0
    assert math.isnan(res.top5)


def test_classifier_files(tmp_path):
    train, val = separable()
    res = train_linear(train, val, LinearConfig(epochs=2, lr=1.0))
    path = save_classifier(tmp_path / "linear.pth", res, n_last_blocks=4)
    back = load_classifier(path)
    torch.testing.assert_close(back(val.features), res.classifier.eval()(val.features))
    assert torch.load(path, weights_only=True)["n_last_blocks"] == 4
    # The release's files: a DDP state dict under "state_dict".
    release = {"state_dict": {f"module.{k}": v for k, v in res.classifier.state_dict().items()}, "epoch": 100}
    torch.save(release, tmp_path / "release.pth")
    torch.testing.assert_close(load_classifier(tmp_path / "release.pth").linear.weight, res.classifier.linear.weight)
    torch.save({"state_dict": {"other": torch.ones(1)}}, tmp_path / "bad.pth")
    with pytest.raises(DataError):
        load_classifier(tmp_path / "bad.pth")


def test_bad_recipes_and_data():
    with pytest.raises(ConfigError):
        LinearConfig(epochs=0)
    with pytest.raises(ConfigError):
        LinearConfig(lr=-1.0)
    one_class = Features(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DataError):
        train_linear(one_class, one_class, LinearConfig(epochs=1))
    three = Features(torch.randn(6, 3), torch.arange(6) % 3)
    with pytest.raises(DataError, match="the data has 3 classes but --num_labels is 2"):
        train_linear(three, three, LinearConfig(epochs=1), num_classes=2)
    assert train_linear(three, three, LinearConfig(epochs=1), num_classes=5).classifier.num_labels == 5


def test_augmented_path_and_real_cifar(cifar_small):
    train_dir, test_dir = cifar_small
    torch.manual_seed(0)
    vit = vit_tiny(patch_size=4, img_size=32).eval()
    embed = Embedding(2, True)
    val = extract_features(vit, test_dir, embed, EvalTransform(32, 32))
    rows = []
    res = train_linear_augmented(vit, ImageList.from_folder(train_dir), val, 32,
                                 LinearConfig(epochs=2, lr=0.5, batch_size=100), embed, on_epoch=rows.append)
    assert res.classifier.linear.in_features == 3 * 192
    assert [r["epoch"] for r in rows] == [0, 1] and all("val_top1" in r for r in rows)
    assert 0.0 <= res.top1 <= 100.0
    # Fast path on the cached features of the same backbone beats chance on real images.
    train = extract_features(vit, train_dir, embed, EvalTransform(32, 32))
    fast = train_linear(train, val, LinearConfig(epochs=30, lr=0.5, batch_size=100))
    assert fast.best_top1 > 15.0  # chance: 10% on 100 test images
