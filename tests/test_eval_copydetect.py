"""Copy detection: GeM features, PCA whitening, ground-truth matching, and edited copies of real
CIFAR images found among distractors."""

from __future__ import annotations

import random

import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from dinokit.data import find_images
from dinokit.errors import ConfigError, DataError
from dinokit.eval.copydetect import (CopyDetectOptions, GemEmbedding, PCAWhitening, copy_detection_map,
                                     evaluate_copy_detection, match_by_name, read_pairs_csv)
from dinokit.models import vit_tiny


def test_gem_embedding_is_cls_then_gem_of_patch_tokens():
    torch.manual_seed(0)
    vit = vit_tiny(patch_size=8, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = GemEmbedding()(vit, x)
        tokens = vit.get_intermediate_layers(x, 1)[0]
    assert out.shape == (2, 384)
    torch.testing.assert_close(out[:, :192], tokens[:, 0])
    patches = tokens[:, 1:].clamp(min=1e-6)
    torch.testing.assert_close(out[:, 192:], patches.pow(4).mean(dim=1).pow(0.25))
    # p = 1 is the mean of the clamped tokens; large p tends to the max.
    with torch.no_grad():
        torch.testing.assert_close(GemEmbedding(1.0)(vit, x)[:, 192:], patches.mean(dim=1))
        assert torch.allclose(GemEmbedding(200.0)(vit, x)[:, 192:], patches.amax(dim=1), rtol=0.05)


def test_pca_whitening_gives_identity_covariance():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(6, 6, generator=g)
    feats = torch.randn(2000, 6, generator=g) @ mix + 3.0
    white = PCAWhitening().fit(feats)
    out = white.apply(feats)
    cov = torch.cov(out.T.double())
    torch.testing.assert_close(cov, torch.eye(6, dtype=torch.float64), atol=2e-3, rtol=0)
    torch.testing.assert_close(out.mean(dim=0), torch.zeros(6), atol=1e-4, rtol=0)
    assert PCAWhitening(dim=3).fit(feats).apply(feats).shape == (2000, 3)
    assert PCAWhitening().fit(feats[:4]).apply(feats).shape == (2000, 3)  # rank of 4 samples
    with pytest.raises(RuntimeError):
        PCAWhitening().apply(feats)


def test_ground_truth_by_name_prefix_and_csv(tmp_path):
    queries = [tmp_path / "q" / "strong" / "1234.jpg", tmp_path / "q" / "7000_crop.jpg", tmp_path / "q" / "none.jpg"]
    db = [tmp_path / "db" / "7000_crop.png", tmp_path / "db" / "1234.png", tmp_path / "db" / "12345.png"]
    assert [p.tolist() for p in match_by_name(queries, db)] == [[1], [0], []]
    assert [p.tolist() for p in match_by_name(queries, db, match_prefix=4)] == [[1, 2], [0], []]
    csv = tmp_path / "pairs.csv"
    csv.write_text("query,database\nstrong/1234.jpg,12345.png\n7000_crop.jpg,1234.png\n# comment\n")
    pos = read_pairs_csv(csv, queries, db, tmp_path / "q", tmp_path / "db")
    assert [p.tolist() for p in pos] == [[2], [1], []]
    csv.write_text("7000_crop.jpg,missing.png\n")
    with pytest.raises(DataError, match="missing.png"):
        read_pairs_csv(csv, queries, db, tmp_path / "q", tmp_path / "db")
    csv.write_text("7000_crop.jpg;1234.png\n")  # semicolons: one column per row
    with pytest.raises(DataError, match="no row has two comma-separated columns"):
        read_pairs_csv(csv, queries, db, tmp_path / "q", tmp_path / "db")


def test_map_of_hand_made_features():
    db = torch.eye(4)
    queries = torch.tensor([[1.0, 0.2, 0.0, 0.0], [0.0, 0.1, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    # Query 0 -> db 0 first (AP 1); query 1 -> db 1 second behind db 3 (AP 0.25); query 2 has none.
    res = copy_detection_map(queries, db, [np.array([0]), np.array([1]), np.array([], dtype=int)])
    assert res["mAP"] == pytest.approx(100 * (1 + 0.25) / 2)
    assert res["top1"] == pytest.approx(50.0) and res["queries"] == 2
    with pytest.raises(DataError):
        copy_detection_map(queries, db, [np.array([], dtype=int)] * 3)


def make_copydays_like(cifar_root, root, seed=0):
    """20 originals, 12 edited copies (crop, colour, brightness, JPEG), 40 distractors, 90 for whitening."""
    paths = find_images(cifar_root / "test")[0]
    rng = random.Random(seed)
    sel = rng.sample(paths, 162)
    for d in ("query", "database", "distractors", "whitening"):
        (root / d).mkdir(parents=True)
    for i, p in enumerate(sel[:20]):
        im = Image.open(p).convert("RGB")
        im.save(root / "database" / f"img{i:03d}.png")
        if i < 12:
            c = rng.randint(1, 3)
            q = im.crop((c, c, 32 - rng.randint(0, 2), 32 - rng.randint(0, 2))).resize((32, 32), Image.BICUBIC)
            q = ImageEnhance.Color(q).enhance(rng.uniform(0.7, 1.3))
            q = ImageEnhance.Brightness(q).enhance(rng.uniform(0.8, 1.2))
            q.save(root / "query" / f"img{i:03d}.jpg", quality=80)
    for i, p in enumerate(sel[20:60]):
        Image.open(p).save(root / "distractors" / f"d{i:03d}.jpg")
    for i, p in enumerate(sel[60:150]):
        Image.open(p).save(root / "whitening" / f"w{i:03d}.jpg")
    return root


def test_edited_copies_are_found_among_distractors(cifar_root, tmp_path):
    root = make_copydays_like(cifar_root, tmp_path / "copies")
    torch.manual_seed(0)
    vit = vit_tiny(patch_size=16, img_size=96).eval()
    opts = CopyDetectOptions(imsize=96)
    plain = evaluate_copy_detection(vit, root / "query", root / "database", root / "distractors", None, opts)
    assert plain["queries"] == 12 and plain["database"] == 60 and plain["distractors"] == 40
    assert not plain["whitened"]
    # Chance is about 5% (one original among 60 images); even a random ViT finds most copies, and
    # whitening learned on unrelated images makes its features markedly better (about 87% here).
    assert plain["mAP"] > 40.0
    whitened = evaluate_copy_detection(vit, root / "query", root / "database", root / "distractors",
                                       root / "whitening", opts)
    assert whitened["whitened"] and whitened["mAP"] > 75.0
    assert whitened["mAP"] > plain["mAP"] + 5.0
    with pytest.raises(ConfigError):
        evaluate_copy_detection(vit, root / "query", root / "database",
                                opts=CopyDetectOptions(imsize=96, match_prefix=3, gt_csv="x.csv"))
    one = tmp_path / "one_image"
    one.mkdir()
    shutil.copy(next((root / "whitening").iterdir()), one)
    with pytest.raises(DataError, match="whitening needs at least 2 images"):  # one direction of nothing
        evaluate_copy_detection(vit, root / "query", root / "database", None, one, opts)


def test_no_matching_names_fail_before_any_extraction(cifar_root, tmp_path, monkeypatch):
    root = make_copydays_like(cifar_root, tmp_path / "copies")
    for p in find_images(root / "query")[0]:
        p.rename(p.with_name("renamed_" + p.name))

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted before the ground truth was checked")
    monkeypatch.setattr("dinokit.eval.copydetect.extract_features", no_extraction)
    with pytest.raises(DataError, match="no query has a matching database image"):
        evaluate_copy_detection(vit_tiny(patch_size=16), root / "query", root / "database",
                                opts=CopyDetectOptions(imsize=32))
