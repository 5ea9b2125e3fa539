"""Training canvases from real and awkward files, bad-file handling, the in-memory cache and its shards."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dinokit.data import train_dataset as td
from dinokit.data.folder import ImageList, load_rgb
from dinokit.data.train_dataset import (CachedImages, TrainImageDataset, collate_skip_bad, estimate_decoded_bytes,
                                        to_canvas)

CANVAS = 32
BAD = {"corrupt.jpg", "empty.jpg", "text.jpg", "truncated.jpg"}


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory, cifar_root) -> Path:
    """Real CIFAR JPEGs plus every awkward kind of file, all in one class-less folder."""
    d = tmp_path_factory.mktemp("odd")
    cifar = sorted((cifar_root / "train" / "cat").iterdir())[:6]
    for f in cifar:
        shutil.copy(f, d / f"cifar_{f.name}")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n")
    full = (d / f"cifar_{cifar[0].name}").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 3])
    Image.new("RGB", (1, 1), (200, 10, 30)).save(d / "one_pixel.png")
    ramp = (np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 130).astype(np.uint16)
    Image.fromarray(ramp).save(d / "sixteen_bit.png")
    Image.new("CMYK", (24, 16), (0, 255, 255, 0)).save(d / "cmyk.jpg")
    pal = Image.new("P", (10, 12), 1)
    pal.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
    pal.paste(0, (0, 0, 5, 12))
    pal.save(d / "palette.png", transparency=0)
    rgba = np.zeros((9, 7, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    rgba[:, :3, 3] = 0  # transparent left part
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 90, 3), dtype=np.uint8)).save(d / "wide.png")
    Image.fromarray(rng.integers(0, 256, (200, 30, 3), dtype=np.uint8)).save(d / "tall.png")
    Image.fromarray(rng.integers(0, 256, (3000, 2, 3), dtype=np.uint8)).save(d / "needle.png")
    return d


def _sample_by_name(ds: TrainImageDataset) -> dict:
    return {Path(p).name: ds[i] for i, p in enumerate(ds.images.paths)}


def test_canvases_of_every_kind_of_file(odd_folder):
    images = ImageList.from_folder(odd_folder)
    ds = TrainImageDataset(images, CANVAS)
    samples = _sample_by_name(ds)
    for name, (canvas, hw, label, index) in samples.items():
        assert canvas.shape == (3, CANVAS, CANVAS) and canvas.dtype == torch.uint8
        assert hw.dtype == torch.int32 and label == 0 and Path(images.paths[index]).name == name
        h, w = hw.tolist()
        if name in BAD:
            assert (h, w) == (0, 0)
            continue
        assert 1 <= h <= CANVAS and 1 <= w <= CANVAS
        assert canvas[:, h:].sum() == 0 and canvas[:, :, w:].sum() == 0  # zero padding
        if max(Image.open(odd_folder / name).size) <= CANVAS:  # kept pixel for pixel
            ref = np.asarray(load_rgb(odd_folder / name)).transpose(2, 0, 1)
            assert np.array_equal(canvas[:, :h, :w].numpy(), ref)
    assert samples["one_pixel.png"][1].tolist() == [1, 1]
    assert samples["one_pixel.png"][0][:, 0, 0].tolist() == [200, 10, 30]
    assert samples["cifar_" + sorted(p.name for p in odd_folder.iterdir())[0][6:]][1].tolist() == [32, 32]
    assert samples["sixteen_bit.png"][1].tolist() == [20, 24]
    assert samples["sixteen_bit.png"][0][0, 19, 23] > samples["sixteen_bit.png"][0][0, 0, 1]
    c, hw = samples["cmyk.jpg"][:2]
    assert hw.tolist() == [16, 24] and c[0, :16, :24].float().mean() > 200 and c[1, :16, :24].float().mean() < 60
    c = samples["palette.png"][0]  # transparent half on white, the rest (0, 128, 255)
    assert c[:, 0, 0].tolist() == [255, 255, 255] and c[:, 0, 9].tolist() == [0, 128, 255]
    c = samples["rgba.png"][0]
    assert c[:, 0, 0].tolist() == [255, 255, 255] and c[:, 0, 6].tolist() == [255, 0, 0]
    # larger images shrink to the canvas, aspect kept, shorter side at least one pixel
    assert samples["wide.png"][1].tolist() == [18, 32]
    assert samples["tall.png"][1].tolist() == [32, 5]
    assert samples["needle.png"][1].tolist() == [32, 1]


def test_to_canvas_shrinks_with_bicubic_and_never_enlarges():
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8))
    canvas, hw = to_canvas(im, 32)
    assert hw.tolist() == [20, 32]
    ref = np.asarray(im.resize((32, 20), Image.BICUBIC)).transpose(2, 0, 1)
    assert np.array_equal(canvas[:, :20, :32].numpy(), ref)
    small = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    canvas, hw = to_canvas(small, 64)
    assert hw.tolist() == [5, 7] and np.array_equal(canvas[:, :5, :7].numpy(), np.asarray(small).transpose(2, 0, 1))


def test_collate_drops_bad_files_and_reports_them_once(odd_folder, caplog):
    images = ImageList.from_folder(odd_folder)
    ds = TrainImageDataset(images, CANVAS)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_skip_bad)
    seen, bad = [], []
    for batch in loader:
        assert batch.images.shape[1:] == (3, CANVAS, CANVAS) and batch.images.dtype == torch.uint8
        assert batch.images.shape[0] == batch.hw.shape[0] == batch.labels.shape[0] == batch.index.shape[0]
        assert (batch.hw > 0).all()
        seen += batch.index.tolist()
        bad += batch.bad
    names = [Path(p).name for p in images.paths]
    assert sorted(names[i] for i in bad) == sorted(BAD)
    assert sorted(seen + bad) == list(range(len(images)))
    with caplog.at_level(logging.WARNING, logger="dinokit.data.train_dataset"):
        new = ds.report_bad(bad)
        again = ds.report_bad(bad)
    assert sorted(Path(p).name for p in new) == sorted(BAD) and again == []
    assert sorted(Path(p).name for p in images.bad) == sorted(BAD)
    assert all(images.bad[p] for p in images.bad)  # a reason for each
    assert sum("skipping unusable image" in r.message for r in caplog.records) == len(BAD)


def test_a_batch_of_only_bad_files_is_still_a_batch(odd_folder):
    images = ImageList.from_folder(odd_folder)
    ds = TrainImageDataset(images, CANVAS)
    idx = [i for i, p in enumerate(images.paths) if Path(p).name in BAD]
    batch = collate_skip_bad([ds[i] for i in idx])
    assert batch.images.shape == (0, 3, CANVAS, CANVAS) and batch.hw.shape == (0, 2)
    assert batch.labels.shape == (0,) and batch.index.shape == (0,) and sorted(batch.bad) == sorted(idx)


def test_cache_skips_bad_files_and_round_trips(odd_folder, tmp_path, monkeypatch):
    images = ImageList.from_folder(odd_folder)
    calls = []
    progress = []
    cache = CachedImages(images, CANVAS, num_workers=0, progress=lambda d, t: progress.append((d, t)),
                         cache_file=tmp_path / "c.pt", decode_batch=5)
    n_good = len(images) - len(BAD)
    assert len(cache) == n_good and cache.images.shape == (n_good, 3, CANVAS, CANVAS)
    assert sorted(Path(p).name for p in cache.bad) == sorted(BAD) and all(cache.bad.values())
    assert progress[-1] == (len(images), len(images))
    ds = TrainImageDataset(images, CANVAS)
    for row, i in enumerate(cache.index.tolist()):
        canvas, hw, label, _ = ds[i]
        assert torch.equal(cache.images[row], canvas) and torch.equal(cache.hw[row], hw)
        assert cache.labels[row] == label
    # second run: nothing is decoded
    real = td.load_rgb
    monkeypatch.setattr(td, "load_rgb", lambda *a, **k: calls.append(a) or real(*a, **k))
    fresh = ImageList.from_folder(odd_folder)
    again = CachedImages(fresh, CANVAS, cache_file=tmp_path / "c.pt")
    assert calls == []
    for name in ("images", "hw", "labels", "index"):
        assert torch.equal(getattr(again, name), getattr(cache, name))
    assert again.bad == cache.bad and set(fresh.bad) == set(cache.bad)
    d = torch.load(tmp_path / "c.pt", weights_only=True)
    assert d["images"].shape == (n_good, 3, CANVAS, CANVAS)
    # another canvas size or another file list decodes again
    CachedImages(ImageList.from_folder(odd_folder), 16, cache_file=tmp_path / "c.pt")
    assert calls
    calls.clear()
    fewer = ImageList.from_folder(odd_folder)
    fewer.paths, fewer.labels = fewer.paths[:5], fewer.labels[:5]
    assert len(CachedImages(fewer, 16, cache_file=tmp_path / "c.pt")) <= 5 and calls


def test_cache_file_that_is_garbage_is_rebuilt(odd_folder, tmp_path):
    (tmp_path / "c.pt").write_bytes(b"not a torch file")
    cache = CachedImages(ImageList.from_folder(odd_folder), CANVAS, cache_file=tmp_path / "c.pt")
    assert len(cache) == len(ImageList.from_folder(odd_folder)) - len(BAD)
    assert torch.load(tmp_path / "c.pt", weights_only=True)["images"].shape[0] == len(cache)


@pytest.fixture(scope="module")
def cifar_cache(cifar_small):
    images = ImageList.from_folder(cifar_small[0])
    return CachedImages(images, CANVAS, num_workers=2), images


def test_cache_of_real_cifar_images(cifar_cache):
    cache, images = cifar_cache
    assert len(cache) == 300 and cache.bad == {}
    assert (cache.hw == 32).all()
    assert torch.equal(cache.labels, torch.tensor(images.labels))
    for row in (0, 123, 299):
        ref = np.asarray(load_rgb(images.paths[int(cache.index[row])])).transpose(2, 0, 1)
        assert np.array_equal(cache.images[row].numpy(), ref)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_batches_shard_disjointly_and_cover_the_epoch(cifar_cache, world_size):
    cache, _ = cifar_cache
    per_rank = {}
    for rank in range(world_size):
        batches = list(cache.batches(20, torch.Generator().manual_seed(4), drop_last=True, rank=rank,
                                     world_size=world_size))
        assert len(batches) == cache.num_batches(20, True, world_size)
        for b in batches:
            assert b.images.shape == (20, 3, CANVAS, CANVAS) and b.hw.shape == (20, 2)
            rows = b.index  # index == row here (no bad files), so batch rows can be checked
            assert torch.equal(b.images, cache.images[rows]) and torch.equal(b.labels, cache.labels[rows])
        per_rank[rank] = torch.cat([b.index for b in batches]).tolist()
    allidx = sum(per_rank.values(), [])
    assert len(allidx) == len(set(allidx))  # disjoint, no repeats
    if world_size == 1:
        assert sorted(allidx) == list(range(300))  # 300 = 15 batches of 20: the whole epoch
    if world_size == 3:
        assert len(allidx) == 300  # 100 per rank = 5 batches of 20
    # reproducible, and another epoch seed shuffles differently
    again = [b.index for b in cache.batches(20, torch.Generator().manual_seed(4), rank=0, world_size=world_size)]
    assert torch.cat(again).tolist() == per_rank[0]
    other = [b.index for b in cache.batches(20, torch.Generator().manual_seed(5), rank=0, world_size=world_size)]
    assert torch.cat(other).tolist() != per_rank[0]


def test_batches_without_drop_last_see_every_image(cifar_cache):
    cache, _ = cifar_cache
    seen = []
    for rank in range(2):
        bs = list(cache.batches(32, torch.Generator().manual_seed(0), drop_last=False, rank=rank, world_size=2))
        assert len(bs) == cache.num_batches(32, False, 2) == 5 and bs[-1].images.shape[0] == 150 - 4 * 32
        seen += torch.cat([b.index for b in bs]).tolist()
    assert sorted(seen) == list(range(300))
    with pytest.raises(ValueError):
        next(cache.batches(4, rank=2, world_size=2))


def test_estimate_decoded_bytes(cifar_cache):
    cache, _ = cifar_cache
    assert estimate_decoded_bytes(len(cache), CANVAS) == cache.nbytes
    assert estimate_decoded_bytes(1_281_167, 256) > 250e9


@pytest.mark.parametrize("layout", ["classes", "flat"])
def test_a_run_inside_its_data_folder_does_not_train_on_its_own_pictures(cifar_root, tmp_path, layout):
    from dinokit.train import load_config
    from dinokit.train.batches import TrainBatches
    from dinokit.train.distributed import DistInfo

    data = tmp_path / "data"
    for cls in ("cat", "dog"):
        folder = data / cls if layout == "classes" else data
        folder.mkdir(parents=True, exist_ok=True)
        for f in sorted((cifar_root / "train" / cls).iterdir())[:5]:
            shutil.copy(f, folder / f"{cls}_{f.name}")
    report = data / "run" / "report"
    report.mkdir(parents=True)
    for name in ("loss.png", "attention.png"):  # what an earlier run wrote into --output_dir
        Image.new("RGB", (64, 64)).save(report / name)
    cfg = load_config({"data_path": str(data), "output_dir": str(data / "run"), "batch_size_per_gpu": 2,
                       "num_workers": 0}, preset="demo")
    batches = TrainBatches(cfg, DistInfo(), torch.device("cpu"))
    assert batches.num_images == 10 and not any("report" in str(p) for p in batches.images.paths)
    assert len(ImageList.from_folder(data)) == 12  # other commands still see every image


def test_symlinks_back_up_the_tree_are_not_walked_again(cifar_root, tmp_path):
    from dinokit.data import find_images

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for f in sorted((cifar_root / "train" / cls).iterdir())[:3]:
            shutil.copy(f, tmp_path / cls / f.name)
    (tmp_path / "cat" / "up").symlink_to("..")   # a loop: os.walk would list the tree 40 times over
    (tmp_path / "self").symlink_to(".")          # not a class of its own
    elsewhere = tmp_path.parent / f"{tmp_path.name}_more"
    elsewhere.mkdir()
    shutil.copy(sorted((cifar_root / "train" / "dog").iterdir())[5], elsewhere / "linked.jpg")
    (tmp_path / "dog" / "more").symlink_to(elsewhere)  # a link to another folder is followed
    paths, labels, classes = find_images(tmp_path)
    assert classes == ["cat", "dog"] and len(paths) == 7 and labels.count(1) == 4
    assert any(p.name == "linked.jpg" for p in paths)


def test_data_workers_are_capped_at_the_cpus_the_process_may_use(monkeypatch, caplog):
    from dinokit.runtime import _note_lowered, usable_workers

    _note_lowered.cache_clear()  # logged once per process
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with caplog.at_level(logging.INFO):
        assert usable_workers(10) == 2  # the release's default on a 2-core machine
    assert "--num_workers 10 lowered to 2" in caplog.text
    assert usable_workers(2) == 2 and usable_workers(0) == 0


def test_the_training_augmentation_takes_the_configs_recipe(cifar_small, tmp_path):
    from dinokit.train import load_config
    from dinokit.train.batches import TrainBatches
    from dinokit.train.distributed import DistInfo

    cfg = load_config({"data_path": str(cifar_small[0]), "output_dir": str(tmp_path / "run"), "num_workers": 0,
                       "p_blur": (0, 0, 0.25), "p_solarize": 0.3, "color_jitter": 0.5, "blur_sigma": (0.2, 0.4)},
                      preset="cifar_resnet")
    aug = TrainBatches(cfg, DistInfo(), torch.device("cpu")).augment.cfg
    assert (aug.p_blur, aug.p_solarize, aug.blur_sigma) == ((0, 0, 0.25), 0.3, (0.2, 0.4))
    assert aug.jitter == (0.2, 0.2, 0.1, 0.05) and (aug.global_size, aug.local_crops_number) == (24, 0)
    assert aug.global_crops_scale == (0.2, 1.0)
