"""Weighted k-NN: hand-computed votes, a brute-force reference, bf16 vs fp32, real CIFAR pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dinokit.data import EvalTransform, ImageList, find_images
from dinokit.errors import ConfigError, DataError
from dinokit.eval.features import extract_features
from dinokit.eval.knn import _Bf16Search, knn_classify, knn_evaluate, knn_neighbors, knn_predict, knn_votes


def brute_force_knn(train, train_y, test, k, T, num_classes):
    """float64 loops: cosine similarities, top-k, exp(sim/T) votes; returns the votes [M, C]."""
    train = train.double().numpy()
    test = test.double().numpy()
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    votes = np.zeros((len(test), num_classes))
    for i, q in enumerate(test):
        sims = train @ q
        for j in np.argsort(-sims, kind="stable")[:k]:
            votes[i, int(train_y[j])] += math.exp(sims[j] / T)
    return votes


def test_votes_match_a_hand_computation():
    # Unit vectors at 0 (class 0), 10 and 12 degrees (class 1); the query sits at 3 degrees.
    angles = torch.tensor([0.0, 10.0, 12.0]) * math.pi / 180
    train = torch.stack((angles.cos(), angles.sin()), dim=1)
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[math.cos(math.radians(3)), math.sin(math.radians(3))]])
    sims, index = knn_neighbors(train, q, 3, precision="fp32")
    assert index.tolist() == [[0, 1, 2]]
    cos = [math.cos(math.radians(a)) for a in (3, 7, 9)]
    assert sims[0].tolist() == pytest.approx(cos, abs=1e-6)
    votes = knn_votes(sims, index, labels, 2, T=0.07)
    expected = [math.exp(cos[0] / 0.07), math.exp(cos[1] / 0.07) + math.exp(cos[2] / 0.07)]
    assert votes[0].tolist() == pytest.approx(expected, rel=1e-5)
    # One neighbour: class 0; three: the two class-1 votes (e^14.18 + e^14.12) beat e^14.26.
    assert knn_predict(train, labels, q, k=1, precision="fp32").tolist() == [0]
    assert knn_predict(train, labels, q, k=3, precision="fp32").tolist() == [1]
    # A colder temperature lets the single nearest neighbour win again.
    assert knn_predict(train, labels, q, k=3, T=0.01, precision="fp32").tolist() == [0]


def test_separated_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 64, generator=g) * 3
    train_y = torch.arange(500) % 5
    test_y = torch.arange(100) % 5
    train = centers[train_y] + torch.randn(500, 64, generator=g)
    test = centers[test_y] + torch.randn(100, 64, generator=g)
    res = knn_evaluate(train, train_y, test, test_y, ks=(1, 20))
    assert res == {1: {"top1": 100.0, "top5": 100.0}, 20: {"top1": 100.0, "top5": 100.0}}
    # Shuffled test labels: accuracy falls to chance.
    wrong = knn_classify(train, train_y, test, (test_y + 1) % 5, k=20)
    assert wrong["top1"] == 0.0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_predictions_equal_brute_force(precision, k):
    g = torch.Generator().manual_seed(k)
    train = torch.randn(600, 32, generator=g)
    test = torch.randn(150, 32, generator=g)
    train_y = torch.randint(0, 7, (600,), generator=g)
    test_y = torch.randint(0, 7, (150,), generator=g)
    ref_votes = brute_force_knn(train, train_y, test, k, 0.07, 7)
    sims, index = knn_neighbors(train, test, k, precision=precision, chunk_size=17)
    votes = knn_votes(sims, index, train_y, 7).double().numpy()
    np.testing.assert_allclose(votes, ref_votes, rtol=1e-4)
    pred = knn_predict(train, train_y, test, k=k, precision=precision)
    assert pred.tolist() == ref_votes.argmax(axis=1).tolist()
    ref_top1 = 100.0 * (ref_votes.argmax(axis=1) == test_y.numpy()).mean()
    order = np.argsort(-ref_votes, axis=1, kind="stable")[:, :min(5, k)]
    voted = np.take_along_axis(ref_votes, order, axis=1) > 0
    ref_top5 = 100.0 * ((order == test_y.numpy()[:, None]) & voted).any(axis=1).mean()
    res = knn_classify(train, train_y, test, test_y, k=k, precision=precision)
    assert res["top1"] == pytest.approx(ref_top1)
    assert res["top5"] == pytest.approx(ref_top5)


def test_bf16_shortlist_equals_fp32_and_falls_back_when_needed():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 48, generator=g)
    y = torch.randint(0, 4, (4000,), generator=g)
    # Tight clusters: many neighbours within bf16 rounding error of each other.
    train = torch.nn.functional.normalize(centers[y[:3000]] * 3 + torch.randn(3000, 48, generator=g), dim=1)
    test = torch.nn.functional.normalize(centers[y[3000:]] * 3 + torch.randn(1000, 48, generator=g), dim=1)
    search = _Bf16Search(train, 20)
    sims, index = search(test)
    ref_sims, ref_index = (test @ train.T).topk(20, dim=1)
    torch.testing.assert_close(sims, ref_sims, atol=1e-6, rtol=0)
    assert (index == ref_index).float().mean() > 0.999  # differences only between fp32 ties
    assert search.recomputed > 0  # the certificate refused some shortlists: those rows were redone
    # Spread-out features: shortlists are certified, nothing recomputed.
    spread = _Bf16Search(torch.nn.functional.normalize(torch.randn(3000, 48, generator=g), dim=1), 20)
    q = torch.nn.functional.normalize(torch.randn(200, 48, generator=g), dim=1)
    s2, _ = spread(q)
    torch.testing.assert_close(s2, (q @ spread.train.T).topk(20, dim=1).values, atol=1e-6, rtol=0)
    assert spread.recomputed < 20


def test_chunking_and_scale_do_not_change_results():
    g = torch.Generator().manual_seed(3)
    train, test = torch.randn(300, 16, generator=g), torch.randn(40, 16, generator=g)
    train_y, test_y = torch.randint(0, 3, (300,), generator=g), torch.randint(0, 3, (40,), generator=g)
    a = knn_evaluate(train, train_y, test, test_y, ks=(3, 10), precision="fp32")
    b = knn_evaluate(train * 7.5, train_y, test * 0.1, test_y, ks=(3, 10), precision="fp32", chunk_size=3)
    assert a == b


def test_k_larger_than_the_training_set_and_bad_inputs():
    train, y = torch.eye(3), torch.tensor([0, 1, 2])
    res = knn_evaluate(train, y, train, y, ks=(10,))
    assert res[10]["top1"] == 100.0
    with pytest.raises(ConfigError):
        knn_neighbors(train, train, 0)
    with pytest.raises(DataError):
        knn_neighbors(train, torch.ones(2, 4), 1)
    with pytest.raises(DataError):
        knn_evaluate(train, y[:2], train, y)
    with pytest.raises(DataError, match="at least 2 classes"):  # one class: 100% whatever the features
        knn_evaluate(train, torch.zeros(3, dtype=torch.long), train, torch.zeros(3, dtype=torch.long))


def _subset(root, per_class):
    """The first ``per_class`` images of every class folder of ``root``."""
    paths, labels, classes = find_images(root)
    seen, keep = {}, []
    for path, label in zip(paths, labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] <= per_class:
            keep.append((path, label))
    return ImageList([p for p, _ in keep], [lab for _, lab in keep], classes, root)


class _Pixels(torch.nn.Module):
    """Raw pixels (normalised, 2x2 average-pooled) as features: a baseline backbone."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 2).flatten(1)


def test_raw_pixels_on_real_cifar_beat_chance(cifar_root):
    transform = EvalTransform(32, 32)
    train = extract_features(_Pixels(), _subset(cifar_root / "train", 100), transform=transform, batch_size=250)
    test = extract_features(_Pixels(), _subset(cifar_root / "test", 50), transform=transform, batch_size=250)
    assert len(train) == 1000 and len(test) == 500
    res = knn_evaluate(train.features, train.labels, test.features, test.labels, ks=(10, 20))
    # Chance is 10% (+-1.3% for 500 test images); raw pixels reach about 25%.
    assert res[20]["top1"] > 18.0
    assert res[20]["top5"] > 55.0
    assert res[20] == knn_evaluate(train.features, train.labels, test.features, test.labels, ks=(20,),
                                   precision="fp32")[20]
    # Features saved as .npz come back as NumPy arrays: the same numbers, whatever the container.
    as_numpy = knn_classify(train.features.numpy(), train.labels.numpy(), test.features.numpy(),
                            test.labels.numpy().astype(np.float64), k=20)
    assert as_numpy == res[20]
    assert knn_predict(train.features.numpy(), train.labels.tolist(), test.features.numpy()).tolist() == \
        knn_predict(train.features, train.labels, test.features).tolist()
    with pytest.raises(DataError, match="whole numbers"):
        knn_classify(train.features, train.labels + 0.5, test.features, test.labels)
    with pytest.raises(DataError, match="class labels must be 0, 1, 2 ..., got -1"):
        knn_classify(train.features, train.labels - 1, test.features, test.labels)
    with pytest.raises(ConfigError, match="temperature must be positive"):
        knn_classify(train.features, train.labels, test.features, test.labels, T=0.0)
