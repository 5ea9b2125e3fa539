"""Retrieval: trapezoidal AP by hand, junk handling, the revisited Easy/Medium/Hard protocols,
safe ground-truth pickles, and both dataset layouts end to end on real CIFAR images."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dinokit.errors import DataError
from dinokit.eval.features import Embedding, extract_features
from dinokit.eval.retrieval import (MultiScale, RetrievalOptions, average_precision, class_gnd, compute_map,
                                    evaluate_folders, evaluate_revisited, load_gnd, rank_database, revisited_map)
from dinokit.eval.transforms import Thumbnail
from dinokit.models import vit_tiny


def test_average_precision_by_hand():
    # Positives at ranks 0 and 2 of 2: trapezoids (1 + 1)/2 * 1/2 + (1/2 + 2/3)/2 * 1/2.
    assert average_precision([0, 2], 2) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    assert average_precision([1], 1) == pytest.approx(0.25)
    assert average_precision([0, 1, 2], 3) == pytest.approx(1.0)
    assert average_precision([0], 2) == pytest.approx(0.5)  # a positive never retrieved counts as 0


def test_junk_is_removed_from_the_ranking():
    ranks = np.array([[3], [1], [0], [2]])  # database ids from most to least similar
    m, aps, mpr, _ = compute_map(ranks, [{"ok": [0], "junk": [1]}])
    assert m == pytest.approx(0.25)  # the positive moves from rank 2 to rank 1
    assert mpr.tolist() == pytest.approx([0.0, 0.5, 0.5])
    m, _, _, _ = compute_map(ranks, [{"ok": [0], "junk": []}])
    assert m == pytest.approx(1 / 6)
    m, aps, _, _ = compute_map(ranks, [{"ok": [0], "junk": []}, {"ok": [], "junk": []}])
    assert m == pytest.approx(1 / 6) and np.isnan(aps[1])  # no positives: left out of the mean
    m, _, mpr, _ = compute_map(ranks, [{"ok": [9], "junk": []}])  # a positive outside the database
    assert m == 0.0 and mpr.tolist() == [0.0, 0.0, 0.0]


def test_revisited_protocols_on_a_hand_made_ground_truth():
    # Query 0 ranks the database as 5, 0, 4, 1, 2, 3; query 1 as 0, 1, ..., 5.
    ranks = np.array([[5, 0], [0, 1], [4, 2], [1, 3], [2, 4], [3, 5]])
    gnd = [{"easy": [2], "hard": [0, 3], "junk": [1], "bbx": [0, 0, 1, 1]},
           {"easy": np.array([0]), "hard": np.array([], dtype=int), "junk": np.array([], dtype=int)}]
    res = revisited_map(ranks, gnd)
    # Easy, query 0: positive 2 at rank 4, junk 0, 1 and 3 ahead of it at ranks 1 and 3 -> rank 2.
    easy_q0 = (0 / 2 + 1 / 3) / 2
    # Medium, query 0: positives 0, 2, 3 at ranks 1, 4, 5; junk 1 (rank 3) -> ranks 1, 3, 4.
    medium_q0 = ((0 + 1 / 2) + (1 / 3 + 2 / 4) + (2 / 4 + 3 / 5)) / (2 * 3)
    # Hard, query 0: positives 0, 3 at ranks 1, 5; junk 1, 2 at ranks 3, 4 -> ranks 1, 3.
    hard_q0 = ((0 + 1 / 2) + (1 / 3 + 2 / 4)) / (2 * 2)
    assert res["easy"]["mAP"] == pytest.approx(100 * (easy_q0 + 1) / 2)
    assert res["medium"]["mAP"] == pytest.approx(100 * (medium_q0 + 1) / 2)
    assert res["hard"]["mAP"] == pytest.approx(100 * hard_q0)  # query 1 has no hard positive
    assert set(res["medium"]) == {"mAP", "mP@1", "mP@5", "mP@10"}


def test_rank_database_by_cosine_similarity():
    db = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    q = torch.tensor([[3.0, 0.1], [-1.0, 1.0]])
    ranks = rank_database(db, q)
    assert ranks.shape == (3, 2)
    assert ranks[:, 0].tolist() == [0, 2, 1]  # cosines 1.00, 0.73, 0.03
    assert ranks[:, 1].tolist() == [1, 2, 0]  # cosines 0.71, 0, -0.71


def test_load_gnd_accepts_plain_data_and_refuses_code(tmp_path):
    cfg = {"imlist": ["a", "b"], "qimlist": ["q"],
           "gnd": [{"easy": np.array([0]), "hard": np.array([1]), "junk": np.array([], dtype=np.int64),
                    "bbx": [1.0, 2.0, 3.0, 4.0]}]}
    for protocol in (2, 4):
        path = tmp_path / f"gnd{protocol}.pkl"
        path.write_bytes(pickle.dumps(cfg, protocol=protocol))
        back = load_gnd(path)
        assert back["imlist"] == ["a", "b"] and back["gnd"][0]["hard"].tolist() == [1]

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [Evil()]}))
    with pytest.raises(DataError, match="refused"):
        load_gnd(tmp_path / "evil.pkl")
    assert not marker.exists()
    (tmp_path / "notgnd.pkl").write_bytes(pickle.dumps({"something": 1}))
    with pytest.raises(DataError):
        load_gnd(tmp_path / "notgnd.pkl")


def test_multiscale_features_are_normalised():
    torch.manual_seed(0)
    vit = vit_tiny(patch_size=8, img_size=32).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        out = MultiScale()(vit, x)
        single = Embedding()(vit, x)
    assert out.shape == (2, 192)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    assert not torch.allclose(out, torch.nn.functional.normalize(single, dim=1))


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return vit_tiny(patch_size=8, img_size=32).eval()


def _cifar_images(cifar_root, n):
    files = []
    for cls in sorted(os.listdir(cifar_root / "test"))[:4]:
        files += sorted((cifar_root / "test" / cls).iterdir())[:n]
    return files


def test_revisited_layout_end_to_end(vit, cifar_root, tmp_path):
    images = tmp_path / "roxford5k" / "jpg"
    images.mkdir(parents=True)
    names = []
    for i, f in enumerate(_cifar_images(cifar_root, 2)):  # 8 database images of various sizes
        im = Image.open(f).convert("RGB")
        im.resize((32 + 8 * (i % 3), 32 + 8 * (i % 2)), Image.BICUBIC).save(images / f"db{i}.jpg", quality=95)
        names.append(f"db{i}")
    (images / "q0.jpg").write_bytes((images / "db1.jpg").read_bytes())
    (images / "q1.jpg").write_bytes((images / "db5.jpg").read_bytes())
    empty = np.array([], dtype=np.int64)
    gnd = [{"easy": np.array([1]), "hard": empty, "junk": empty, "bbx": [0, 0, 8, 8]},
           {"easy": empty, "hard": np.array([5]), "junk": np.array([2]), "bbx": [0, 0, 8, 8]}]
    (tmp_path / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(
        pickle.dumps({"imlist": names, "qimlist": ["q0", "q1"], "gnd": gnd}))
    for multiscale in (False, True):
        res = evaluate_revisited(vit, tmp_path, "roxford5k", RetrievalOptions(imsize=40, multiscale=multiscale))
        # Each query is a copy of its positive: found first under every protocol it takes part in.
        assert res["easy"]["mAP"] == pytest.approx(100.0)
        assert res["medium"]["mAP"] == pytest.approx(100.0)
        assert res["hard"]["mAP"] == pytest.approx(100.0)
    # The same numbers from the building blocks, on a ground truth where ranks matter.
    gnd[0]["hard"] = np.array([0, 3, 6])
    (tmp_path / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(
        pickle.dumps({"imlist": names, "qimlist": ["q0", "q1"], "gnd": gnd}))
    res = evaluate_revisited(vit, tmp_path, "roxford5k", RetrievalOptions(imsize=40))
    db = extract_features(vit, [images / f"{n}.jpg" for n in names], transform=Thumbnail(40), batch_size=1)
    q = extract_features(vit, [images / "q0.jpg", images / "q1.jpg"], transform=Thumbnail(40), batch_size=1)
    assert res == revisited_map(rank_database(db.features, q.features), gnd)
    with pytest.raises(DataError):
        evaluate_revisited(vit, tmp_path, "rparis6k")


def test_class_folders_end_to_end(vit, cifar_root, tmp_path):
    files = _cifar_images(cifar_root, 3)
    for i, f in enumerate(files):
        cls = f.parent.name
        (tmp_path / "gallery" / cls).mkdir(parents=True, exist_ok=True)
        (tmp_path / "gallery" / cls / f.name).write_bytes(f.read_bytes())
        if i % 3 == 0:
            (tmp_path / "query" / cls).mkdir(parents=True, exist_ok=True)
            (tmp_path / "query" / cls / f.name).write_bytes(f.read_bytes())
    res = evaluate_folders(vit, tmp_path / "query", tmp_path / "gallery", RetrievalOptions(imsize=32, batch_size=4))
    assert res["queries"] == 4
    assert res["mP@1"] == pytest.approx(100.0)  # each query's own image comes first
    q = extract_features(vit, tmp_path / "query", transform=Thumbnail(32))
    g = extract_features(vit, tmp_path / "gallery", transform=Thumbnail(32))
    gnd = class_gnd([q.classes[i] for i in q.labels], [g.classes[i] for i in g.labels])
    assert res["mAP"] == pytest.approx(100 * compute_map(rank_database(g.features, q.features), gnd)[0])
    assert 100 * (1 / 3) < res["mAP"] <= 100.0


def test_query_classes_without_gallery_images(vit, cifar_root, tmp_path, caplog):
    files = _cifar_images(cifar_root, 2)  # 4 classes, 2 images each
    classes = sorted({f.parent.name for f in files})
    for f in files:
        side = "gallery" if f.parent.name in classes[:2] else "query"
        (tmp_path / side / f.parent.name).mkdir(parents=True, exist_ok=True)
        (tmp_path / side / f.parent.name / f.name).write_bytes(f.read_bytes())
    with pytest.raises(DataError, match="no query class has a gallery folder"):
        evaluate_folders(vit, tmp_path / "query", tmp_path / "gallery", RetrievalOptions(imsize=32))
    # One shared class: its queries are scored, the others are named in a warning.
    shared = tmp_path / "query" / classes[0]
    shared.mkdir()
    (shared / files[0].name).write_bytes(files[0].read_bytes())
    res = evaluate_folders(vit, tmp_path / "query", tmp_path / "gallery", RetrievalOptions(imsize=32))
    assert res["queries"] == 1 and res["mP@1"] == pytest.approx(100.0)
    assert classes[2] in caplog.text and "left out" in caplog.text


def test_images_smaller_than_a_patch_get_a_clear_error(vit, cifar_root):
    from dinokit.errors import InputShapeError
    with pytest.raises(InputShapeError, match="smaller than the 8 px patch"):
        evaluate_folders(vit, cifar_root / "test", cifar_root / "test", RetrievalOptions(imsize=6))

