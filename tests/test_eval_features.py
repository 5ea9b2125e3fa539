"""Feature extraction: the official feature layouts, every kind of source, bad images, files."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from dinokit.data import EvalTransform, ImageList
from dinokit.errors import DataError
from dinokit.errors import ConfigError
from dinokit.eval.features import Embedding, Features, extract_features, load_features, load_official_dump
from dinokit.eval.transforms import RandomResizedCropFlip, SquareResize, Thumbnail
from dinokit.models import resnet50, vit_tiny


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return vit_tiny(patch_size=4, img_size=32).eval()


def test_embedding_layouts_follow_the_release(vit):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        blocks = vit.get_intermediate_layers(x, 4)
        cls_last, avg_last = blocks[-1][:, 0], blocks[-1][:, 1:].mean(dim=1)
        torch.testing.assert_close(Embedding()(vit, x), vit(x))
        torch.testing.assert_close(Embedding()(vit, x), cls_last)
        four = Embedding(4)(vit, x)
        assert four.shape == (3, 4 * 192)
        torch.testing.assert_close(four, torch.cat([b[:, 0] for b in blocks], dim=1))
        # n = 1 with average pooling: class token and mean patch token interleaved, as eval_linear.py builds it.
        inter = Embedding(1, True)(vit, x)
        assert inter.shape == (3, 2 * 192)
        torch.testing.assert_close(inter[:, 0::2], cls_last)
        torch.testing.assert_close(inter[:, 1::2], avg_last)
        two = Embedding(2, True)(vit, x)
        torch.testing.assert_close(two, torch.cat((blocks[-2][:, 0], cls_last, avg_last), dim=1))
        torch.testing.assert_close(Embedding(12)(vit, x)[:, -192:], cls_last)  # all 12 blocks
        with pytest.raises(ConfigError, match="--n_last_blocks 13 exceeds the 12 blocks"):
            Embedding(13)(vit, x)


def test_resnet_gives_its_pooled_feature():
    torch.manual_seed(0)
    net = resnet50().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = Embedding(4, True)(net, x)
        torch.testing.assert_close(out, net(x))
    assert out.shape == (2, 2048)


def test_folder_extraction_labels_paths_and_batching(vit, cifar_small):
    _, test_dir = cifar_small
    a = extract_features(vit, test_dir, transform=EvalTransform(32, 32), batch_size=64, precision="fp32")
    b = extract_features(vit, ImageList.from_folder(test_dir), transform=EvalTransform(32, 32), batch_size=7,
                         precision="fp32")
    assert a.features.shape == (100, 192) and a.features.dtype == torch.float32
    assert a.classes == sorted(p.name for p in test_dir.iterdir())
    assert a.labels.tolist() == [i for i in range(10) for _ in range(10)]
    assert all(p.startswith(str(test_dir / a.classes[y])) for p, y in zip(a.paths, a.labels.tolist()))
    torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=1e-5)
    assert a.paths == b.paths
    # bf16 autocast: the same features up to rounding.
    c = extract_features(vit, test_dir, transform=EvalTransform(32, 32), precision="bf16")
    cos = torch.nn.functional.cosine_similarity(a.features, c.features, dim=1)
    assert cos.min() > 0.99


def test_unreadable_images_are_skipped_with_a_warning(vit, cifar_small, tmp_path, caplog):
    train_dir, _ = cifar_small
    good = sorted((train_dir / "cat").iterdir())[:3]
    (tmp_path / "cat").mkdir()
    for f in good:
        (tmp_path / "cat" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "cat" / "empty.png").write_bytes(b"")
    progress = []
    with caplog.at_level(logging.WARNING):
        out = extract_features(vit, tmp_path, transform=EvalTransform(32, 32), batch_size=2,
                               progress=lambda done, total: progress.append((done, total)))
    assert len(out) == 3
    assert sorted(p.rsplit("/", 1)[1] for p in out.skipped) == ["broken.jpg", "empty.png"]
    assert "broken.jpg" in caplog.text
    assert not any("broken" in p for p in out.paths)
    assert progress[-1] == (5, 5)
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="could be decoded"):
        extract_features(vit, only_bad, transform=EvalTransform(32, 32))


def test_tensor_list_and_loader_sources(vit, cifar_small):
    _, test_dir = cifar_small
    ref = extract_features(vit, test_dir, transform=EvalTransform(32, 32), precision="fp32")
    paths = ref.paths[:12]
    from_list = extract_features(vit, paths, transform=EvalTransform(32, 32), precision="fp32")
    torch.testing.assert_close(from_list.features, ref.features[:12])
    assert from_list.labels.tolist() == [0] * 12
    images = torch.stack([EvalTransform(32, 32)(Image.open(p).convert("RGB")) for p in paths])
    from_tensor = extract_features(vit, images, batch_size=5, precision="fp32")
    torch.testing.assert_close(from_tensor.features, ref.features[:12], atol=1e-5, rtol=1e-5)
    labels = torch.arange(12) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=5)
    vit.train()
    from_loader = extract_features(vit, loader, precision="fp32")
    assert vit.training  # the caller's mode is restored
    vit.eval()
    assert from_loader.labels.tolist() == labels.tolist()
    torch.testing.assert_close(from_loader.features, from_tensor.features)


def test_images_of_different_sizes_run_one_by_one(vit, cifar_small, tmp_path):
    _, test_dir = cifar_small
    src = sorted((test_dir / "dog").iterdir())[:3]
    for i, (f, size) in enumerate(zip(src, [(32, 32), (48, 32), (32, 64)])):
        Image.open(f).resize(size).save(tmp_path / f"{i}.png")
    out = extract_features(vit, tmp_path, transform=Thumbnail(64), batch_size=3, precision="fp32")
    assert out.features.shape == (3, 192)
    single = extract_features(vit, [tmp_path / "1.png"], transform=Thumbnail(64), precision="fp32")
    torch.testing.assert_close(out.features[1:2], single.features)


def test_an_image_thinner_than_a_patch_is_skipped_not_fatal(vit, cifar_small, tmp_path, caplog):
    _, test_dir = cifar_small
    for f in sorted((test_dir / "dog").iterdir())[:2]:
        Image.open(f).save(tmp_path / f.name)
    Image.new("RGB", (640, 12), (90, 120, 200)).save(tmp_path / "strip.png")  # 64 x 1 px at imsize 64
    with caplog.at_level(logging.WARNING):
        out = extract_features(vit, tmp_path, transform=Thumbnail(64), batch_size=1, precision="fp32")
    assert len(out) == 2 and "strip.png" not in str(out.paths)
    assert "strip.png: 64x1 px after resizing, under the network's 4 px patch" in caplog.text
    assert list(out.skipped) == [str(tmp_path / "strip.png")]


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_feature_files_round_trip(tmp_path, suffix):
    feats = Features(torch.randn(5, 7), torch.tensor([0, 1, 1, 2, 0]), [f"/x/{i}.jpg" for i in range(5)],
                     ["a", "b", "c"])
    path = feats.save(tmp_path / f"f{suffix}")
    back = load_features(path)
    torch.testing.assert_close(back.features, feats.features)
    assert back.labels.tolist() == feats.labels.tolist()
    assert back.paths == feats.paths and back.classes == feats.classes
    with pytest.raises(DataError):
        load_features(tmp_path / f"missing{suffix}")
    (tmp_path / f"bad{suffix}").write_bytes(b"garbage")
    with pytest.raises(DataError):
        load_features(tmp_path / f"bad{suffix}")
    # Arrays made elsewhere (NumPy, float64, lists) become float32 / int64 tensors; a label short is named.
    made = Features(feats.features.double().numpy(), feats.labels.tolist())
    assert made.features.dtype == torch.float32 and made.labels.dtype == torch.int64
    torch.testing.assert_close(made.features, feats.features)
    with pytest.raises(DataError, match="and 4 labels"):
        Features(feats.features, feats.labels[:4])
    torch.save({"features": feats.features, "labels": feats.labels[:4]}, tmp_path / "short.pt")
    with pytest.raises(DataError, match="short.pt: features must be"):
        load_features(tmp_path / "short.pt")


def test_official_dump_folder(tmp_path):
    for split, n in (("train", 6), ("test", 4)):
        torch.save(torch.randn(n, 8), tmp_path / f"{split}feat.pth")
        torch.save(torch.arange(n) % 2, tmp_path / f"{split}labels.pth")
    train, test = load_official_dump(tmp_path)
    assert train.features.shape == (6, 8) and test.labels.tolist() == [0, 1, 0, 1]


def test_eval_transforms_sizes():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    assert SquareResize(24)(im).shape == (3, 24, 24)
    assert Thumbnail(30)(im).shape == (3, 20, 30)
    assert Thumbnail(100)(im).shape == (3, 40, 60)  # never enlarged
    crop = RandomResizedCropFlip(16)
    torch.manual_seed(0)
    for _ in range(20):
        left, top, w, h = crop.box(60, 40)
        assert 0 <= left and left + w <= 60 and 0 <= top and top + h <= 40 and w > 0 and h > 0
    torch.manual_seed(1)
    a = crop(im)
    torch.manual_seed(1)
    torch.testing.assert_close(a, crop(im))
    assert a.shape == (3, 16, 16)
