"""Batched DINO augmentation: every op against an independent per-image reference, and the recipe's
shapes, reproducibility and probabilities on real CIFAR-10 images."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from dinokit.augment import AugmentConfig, DINOMultiCrop, ops
from dinokit.data.folder import ImageList, load_rgb
from dinokit.data.preprocess import normalize
from dinokit.data.train_dataset import CachedImages

RATIO = (3 / 4, 4 / 3)


@pytest.fixture(scope="module")
def cifar_batch(cifar_small):
    """64 real CIFAR-10 training images on 32 x 32 canvases: (uint8 [64,3,32,32], hw [64,2])."""
    cache = CachedImages(ImageList.from_folder(cifar_small[0]), 32)
    idx = torch.arange(0, 300, 300 // 64)[:64]
    return cache.images[idx], cache.hw[idx]


@pytest.fixture(scope="module")
def photos(cifar_root):
    """Six CIFAR images as float 0..255 [6, 3, 32, 32] (real colours for the colour ops)."""
    files = [f for cls in ("bird", "ship") for f in sorted((cifar_root / "train" / cls).iterdir())[:3]]
    return torch.stack([torch.from_numpy(np.asarray(load_rgb(f), dtype=np.float32)).permute(2, 0, 1)
                        for f in files])


def small_aug(**kw) -> DINOMultiCrop:
    return DINOMultiCrop(global_size=32, local_size=16, local_crops_number=6, **kw)


# ----------------------------------------------------------------------------------- the recipe

def test_shapes_dtypes_and_count(cifar_batch):
    images, hw = cifar_batch
    out = small_aug()(images, hw, torch.Generator().manual_seed(0))
    assert len(out) == 8
    assert [tuple(o.shape) for o in out] == [(64, 3, 32, 32)] * 2 + [(64, 3, 16, 16)] * 6
    for o in out:
        assert o.dtype == torch.float32 and o.is_contiguous() and torch.isfinite(o).all()
        assert -2.2 < o.min() and o.max() < 2.7  # ImageNet-normalised 0..255 values
    bf = small_aug(out_dtype=torch.bfloat16)(images, hw, torch.Generator().manual_seed(0))
    assert all(b.dtype == torch.bfloat16 for b in bf)
    assert all(torch.allclose(b.float(), o, atol=0.02) for b, o in zip(bf, out))


def test_default_recipe_sizes_on_a_large_canvas():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=g)
    hw = torch.tensor([[256, 200], [180, 256]])
    aug = DINOMultiCrop()
    assert aug.num_crops == 10
    out = aug(images, hw, g)
    assert [tuple(o.shape) for o in out] == [(2, 3, 224, 224)] * 2 + [(2, 3, 96, 96)] * 8


def test_reproducible_from_the_generator(cifar_batch):
    images, hw = cifar_batch
    aug = small_aug()
    a = aug(images, hw, torch.Generator().manual_seed(7))
    b = aug(images, hw, torch.Generator().manual_seed(7))
    c = aug(images, hw, torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(not torch.equal(x, y) for x, y in zip(a, c))
    # every crop of an image differs from the others
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[2], a[3])


def test_cpu_chunks_give_the_same_crops(cifar_batch, monkeypatch):
    from dinokit.augment import multicrop
    images, hw = cifar_batch
    whole = small_aug()(images, hw, torch.Generator().manual_seed(2))
    bf = small_aug(out_dtype=torch.bfloat16)(images, hw, torch.Generator().manual_seed(2))
    monkeypatch.setattr(multicrop, "CPU_CHUNK_BYTES", 12 * 32 * 32 * 5)  # 5 global or 20 local rows
    chunked = small_aug()(images, hw, torch.Generator().manual_seed(2))
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    chunked = small_aug(out_dtype=torch.bfloat16)(images, hw, torch.Generator().manual_seed(2))
    for a, b in zip(bf, chunked):
        torch.testing.assert_close(a, b, atol=0.02, rtol=0)


def test_globals_only_and_parameters_moved_in_one_copy(cifar_batch):
    from dinokit.augment.multicrop import _to_device
    images, hw = cifar_batch
    out = DINOMultiCrop(global_size=24, local_crops_number=0)(images[:5], hw[:5], torch.Generator().manual_seed(0))
    assert [tuple(o.shape) for o in out] == [(5, 3, 24, 24)] * 2
    ts = [torch.arange(5), torch.rand(2, 3), torch.tensor([True, False])]
    moved = _to_device(ts, torch.device("meta"))
    assert [(t.device.type, t.dtype, t.shape) for t in moved] == [("meta", t.dtype, t.shape) for t in ts]
    assert _to_device(ts, torch.device("cpu")) is ts


def test_a_calls_global_size_overrides_the_configured_one(cifar_batch):
    images, hw = cifar_batch
    aug = small_aug()
    out = aug(images, hw, torch.Generator().manual_seed(4), global_size=20)
    assert [tuple(o.shape) for o in out] == [(64, 3, 20, 20)] * 2 + [(64, 3, 16, 16)] * 6
    # the same draws: the boxes cover the same part of each image, only the output size differs
    full = aug(images, hw, torch.Generator().manual_seed(4))
    shrunk = torch.nn.functional.interpolate(full[0], size=20, mode="bilinear", antialias=True)
    assert (out[0] - shrunk).abs().mean() < 0.15 < (out[0] - shrunk.roll(1, 0)).abs().mean()
    assert all(torch.equal(a, b) for a, b in zip(out[2:], full[2:]))


def test_empty_batch():
    out = small_aug()(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, 2, dtype=torch.int32),
                      torch.Generator())
    assert [tuple(o.shape) for o in out] == [(0, 3, 32, 32)] * 2 + [(0, 3, 16, 16)] * 6


def test_hw_defaults_to_the_whole_image_and_bad_input_is_named():
    aug = DINOMultiCrop(local_crops_number=2, global_size=32, local_size=16)
    x = torch.randint(0, 256, (4, 3, 48, 40), dtype=torch.uint8)
    implicit = aug(x, generator=torch.Generator().manual_seed(0))
    explicit = aug(x, torch.tensor([[48, 40]] * 4, dtype=torch.int32), torch.Generator().manual_seed(0))
    assert [tuple(c.shape) for c in implicit] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 2
    assert all(torch.equal(a, b) for a, b in zip(implicit, explicit))
    for bad in (x.float(), x[0], x[:, :1]):
        with pytest.raises(ValueError, match=r"uint8 RGB images \[B, 3, H, W\]"):
            aug(bad)


def test_config_round_trip():
    cfg = AugmentConfig(local_crops_number=2, global_size=64, local_size=32)
    aug = DINOMultiCrop.from_config(cfg)
    assert aug.cfg == cfg and aug.num_crops == 4


def test_without_augmentation_it_is_the_normalised_image(cifar_batch):
    images, hw = cifar_batch
    aug = DINOMultiCrop(global_crops_scale=(1, 1), local_crops_scale=(1, 1), ratio=(1, 1), global_size=32,
                        local_size=32, local_crops_number=2, p_jitter=0, p_gray=0, p_blur=(0, 0, 0), p_solarize=0)
    ref = normalize(images)
    for crop in aug(images, hw, torch.Generator().manual_seed(0)):
        same = (crop - ref).abs().amax((1, 2, 3)) < 1e-4
        mirrored = (crop - ref.flip(-1)).abs().amax((1, 2, 3)) < 1e-4
        assert (same | mirrored).all()
        assert 0 < same.sum() < len(same)  # flipped with p = 0.5


def test_a_calls_global_scale_overrides_the_configured_area_range(cifar_batch):
    images, hw = cifar_batch
    aug = DINOMultiCrop(global_crops_scale=(0.1, 0.2), local_crops_scale=(0.1, 0.2), ratio=(1, 1), global_size=32,
                        local_size=16, local_crops_number=2, p_jitter=0, p_gray=0, p_blur=(0, 0, 0), p_solarize=0)
    ref = normalize(images)
    whole = aug(images, hw, torch.Generator().manual_seed(3), global_scale=(1.0, 1.0))
    small = aug(images, hw, torch.Generator().manual_seed(3))
    for crop, zoomed in zip(whole[:2], small[:2]):  # whole images now, zoomed-in crops by default
        diff = torch.minimum((crop - ref).abs().amax((1, 2, 3)), (crop - ref.flip(-1)).abs().amax((1, 2, 3)))
        assert diff.max() < 1e-4
        assert (zoomed - ref).abs().amax((1, 2, 3)).min() > 0.1
    assert all(torch.equal(a, b) for a, b in zip(whole[2:], small[2:]))  # local crops keep their range


def _changed(aug_on, aug_off, images, hw, seed=0):
    """Per crop and image: did turning one op on change the output? (same random draws)"""
    a = aug_on(images, hw, torch.Generator().manual_seed(seed))
    b = aug_off(images, hw, torch.Generator().manual_seed(seed))
    return torch.stack([(x - y).abs().amax((1, 2, 3)) > 1e-3 for x, y in zip(a, b)])  # [crops, B]


@pytest.fixture(scope="module")
def big_batch(cifar_small):
    cache = CachedImages(ImageList.from_folder(cifar_small[0]), 32)
    return cache.images, cache.hw  # 300 images


def test_probabilities_of_blur_solarize_and_jitter(big_batch):
    images, hw = big_batch
    n = images.shape[0]
    # (sigma near 0.1 leaves an image unchanged: use visible ones)
    blur = _changed(small_aug(blur_sigma=(1, 2)), small_aug(blur_sigma=(1, 2), p_blur=(0, 0, 0)), images, hw)
    blur = blur.float().mean(1)
    assert blur[0] == 1 and abs(blur[1] - 0.1) < 0.06 and abs(blur[2:].mean() - 0.5) < 0.05
    sol = _changed(small_aug(), small_aug(p_solarize=0), images, hw).float().mean(1)
    assert sol[0] == 0 and sol[2:].sum() == 0 and abs(sol[1] - 0.2) < 3 * math.sqrt(0.16 / n)
    jit = _changed(small_aug(), small_aug(p_jitter=0), images, hw).float().mean()
    assert abs(jit - 0.8) < 0.03


def test_probability_of_grayscale(big_batch):
    images, hw = big_batch
    aug = small_aug(p_jitter=0, p_blur=(0, 0, 0), p_solarize=0)
    out = torch.stack(aug(images, hw, torch.Generator().manual_seed(1))[2:])  # the local crops
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    rgb = out * std + mean
    gray = (rgb[:, :, 0] - rgb[:, :, 1]).abs().amax((2, 3)) + (rgb[:, :, 1] - rgb[:, :, 2]).abs().amax((2, 3))
    colourful = (images.float().std(1).mean((1, 2)) > 3)  # CIFAR images that are not gray already
    frac = (gray[:, colourful] < 1e-4).float().mean()
    assert abs(frac - 0.2) < 0.04


# ----------------------------------------------------------------------------------- crop boxes

def _torchvision_get_params(height, width, scale, ratio, r):
    """torchvision.transforms.RandomResizedCrop.get_params, with its random draws taken from ``r``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for t in range(ops.RRC_TRIES):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * r[t])
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * r[ops.RRC_TRIES + t])
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(r[-2] * (height - h + 1))
            j = int(r[-1] * (width - w + 1))
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def test_crop_boxes_follow_torchvision():
    g = torch.Generator().manual_seed(0)
    hw = torch.tensor([[32, 32], [1, 1], [32, 3], [3, 32], [20, 31], [256, 181], [7, 200]] * 40)
    for scale in [(0.4, 1.0), (0.05, 0.4), (0.08, 1.0)]:
        rand = torch.rand(len(hw), ops.RRC_NUM_RAND, generator=g, dtype=torch.float64).float()
        boxes = ops.random_resized_crop_params(hw, scale, RATIO, rand=rand)
        ref = [_torchvision_get_params(int(h), int(w), scale, RATIO, r.double().tolist())
               for (h, w), r in zip(hw, rand)]
        # float32 rounding may move a box by a pixel on a tie
        assert (boxes - torch.tensor(ref, dtype=torch.float32)).abs().le(1).all()
        assert (boxes - torch.tensor(ref, dtype=torch.float32)).abs().sum(1).eq(0).float().mean() > 0.99


@pytest.mark.parametrize("scale", [(0.4, 1.0), (0.05, 0.4)])
def test_crop_boxes_inside_the_image_with_the_right_area(scale):
    g = torch.Generator().manual_seed(1)
    hw = torch.tensor([[1000, 1000], [900, 1200], [64, 48]]).repeat(700, 1)
    top, left, h, w = ops.random_resized_crop_params(hw, scale, RATIO, generator=g).unbind(1)
    H, W = hw[:, 0].float(), hw[:, 1].float()
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= H).all() and (left + w <= W).all()
    assert torch.equal(top, top.round()) and torch.equal(w, w.round())
    big = H > 100
    frac = (h * w / (H * W))[big]
    assert frac.min() >= scale[0] - 0.01 and frac.max() <= scale[1] + 0.01
    assert frac.min() < scale[0] + 0.05 and frac.max() > scale[1] - 0.05  # the whole range is used
    ratio = (w / h)[big]
    assert ratio.min() >= 0.74 and ratio.max() <= 1.34
    # positions are spread over the image
    assert (top[big] / (H - h + 1)[big]).std() > 0.2


# ----------------------------------------------------------------------------------- crop + resize

def _gradient(B, H, W):
    y = torch.arange(H, dtype=torch.float32).view(1, 1, H, 1)
    x = torch.arange(W, dtype=torch.float32).view(1, 1, 1, W)
    img = torch.cat([y * 3 + x, (x * 2 + 1).expand(1, 1, H, W), (y - x).abs()], 1)
    return (img + torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1) * 7).contiguous()


@pytest.mark.parametrize("H,W,size", [(32, 32, 32), (32, 32, 16), (96, 130, 40), (200, 256, 224)])
def test_crop_resize_flip_matches_interpolate(H, W, size):
    images = _gradient(3, H, W) + torch.rand(3, 3, H, W, generator=torch.Generator().manual_seed(0)) * 50
    boxes = torch.tensor([[0, 0, H, W], [2, 3, H // 2, W // 3], [H - 5, W - 4, 5, 4], [1, 0, 1, 1],
                          [H // 4, W // 5, H // 2, W // 2], [0, 0, H, W]], dtype=torch.float32)
    flip = torch.tensor([False, True, False, True, False, True])
    out = ops.crop_resize_flip(images, boxes, flip, size)
    assert out.shape == (6, 3, size, size)
    for n in range(6):
        t, left, h, w = (int(v) for v in boxes[n])
        ref = F.interpolate(images[n % 3:n % 3 + 1, :, t:t + h, left:left + w], size=(size, size), mode="bilinear",
                            align_corners=False)[0]
        ref = ref.flip(-1) if flip[n] else ref
        torch.testing.assert_close(out[n], ref, atol=2e-3, rtol=1e-4)


def test_identity_box_returns_the_image_and_flip_mirrors_it():
    images = _gradient(2, 32, 32)
    boxes = torch.tensor([[0, 0, 32, 32]] * 4, dtype=torch.float32)
    out = ops.crop_resize_flip(images, boxes, torch.tensor([False, False, True, True]), 32)
    torch.testing.assert_close(out[:2], images, atol=1e-4, rtol=0)
    torch.testing.assert_close(out[2:], images.flip(-1), atol=1e-4, rtol=0)


def test_crop_uses_only_the_box_and_src_selects_the_image():
    images = torch.zeros(2, 3, 40, 40)
    images[:, :, 10:20, 5:25] = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    images[1] += 1
    boxes = torch.tensor([[10, 5, 10, 20]] * 2, dtype=torch.float32)
    out = ops.crop_resize_flip(images, boxes, torch.tensor([False, True]), 17, src=torch.tensor([1, 0]))
    torch.testing.assert_close(out[0], torch.tensor([11.0, 21.0, 31.0]).view(3, 1, 1).expand(3, 17, 17))
    torch.testing.assert_close(out[1], torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1).expand(3, 17, 17))


# ----------------------------------------------------------------------------------- colour ops

def _np(x):
    return x.double().numpy()


def _gray_np(img):
    return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def test_brightness_contrast_saturation_exact(photos):
    f = torch.tensor([0.6, 1.4, 1.0, 0.0, 0.8, 1.2])
    for n, img in enumerate(_np(photos)):
        fn = float(f[n])
        gray = _gray_np(img)
        ref_b = np.clip(fn * img, 0, 255)
        ref_c = np.clip(fn * img + (1 - fn) * gray.mean(), 0, 255)
        ref_s = np.clip(fn * img + (1 - fn) * gray[None], 0, 255)
        np.testing.assert_allclose(_np(ops.adjust_brightness(photos, f)[n]), ref_b, atol=1e-3)
        np.testing.assert_allclose(_np(ops.adjust_contrast(photos, f)[n]), ref_c, atol=1e-3)
        np.testing.assert_allclose(_np(ops.adjust_saturation(photos, f)[n]), ref_s, atol=1e-3)


def test_grayscale_matches_pil(photos):
    gray = ops.rgb_to_grayscale(photos)
    assert gray.shape == (6, 1, 32, 32)
    for n in range(6):
        pil = Image.fromarray(photos[n].permute(1, 2, 0).numpy().astype(np.uint8)).convert("L")
        assert np.abs(np.asarray(pil, dtype=np.float64) - _np(gray[n, 0])).max() <= 0.5 + 1e-3
    g3 = ops.grayscale3(photos)
    assert torch.equal(g3[:, 0], g3[:, 2]) and g3.shape == photos.shape


def test_solarize_matches_pil(photos):
    out = ops.solarize(photos)
    for n in range(6):
        pil = ImageOps.solarize(Image.fromarray(photos[n].permute(1, 2, 0).numpy().astype(np.uint8)), 128)
        assert np.array_equal(np.asarray(pil).transpose(2, 0, 1), out[n].numpy().astype(np.uint8))


def test_hue_matches_colorsys(photos):
    shift = torch.tensor([0.1, -0.1, 0.05, -0.03, 0.5, -0.5])
    x = torch.cat([photos, torch.tensor([[[[255.0]], [[255.0]], [[0.0]]]]).expand(6, 3, 32, 32)], 2)
    out = ops.adjust_hue(x, shift)
    rng = np.random.default_rng(0)
    for n in range(6):
        for i, j in [(int(a), int(b)) for a, b in rng.integers(0, [64, 32], size=(40, 2))]:
            r, g, b = (x[n, :, i, j] / 255).tolist()
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            ref = np.array(colorsys.hsv_to_rgb((h + float(shift[n])) % 1.0, s, v)) * 255
            np.testing.assert_allclose(out[n, :, i, j].numpy(), ref, atol=0.05)
    # zero shift is the identity, and hue keeps the value (max) and the min of each pixel
    torch.testing.assert_close(ops.adjust_hue(photos, torch.zeros(6)), photos, atol=1e-3, rtol=0)
    torch.testing.assert_close(out.amax(1), x.amax(1), atol=1e-3, rtol=0)


def test_fused_jitter_equals_the_ops_in_each_samples_order(photos):
    g = torch.Generator().manual_seed(5)
    n = 24
    x = photos.repeat(4, 1, 1, 1)
    lo = torch.tensor([0.6, 0.6, 0.8, -0.1])
    factors = lo + (torch.tensor([1.4, 1.4, 1.2, 0.1]) - lo) * torch.rand(n, 4, generator=g)
    order = torch.rand(n, 4, generator=g).argsort(1)
    apply = torch.rand(n, generator=g) < 0.8
    perm, counts, coef, hue = ops.jitter_plan(factors, order, apply)
    assert sum(counts) == n and counts[4] == int((~apply).sum())
    fused = x[perm].clone()
    m = n - counts[4]
    ops.color_jitter(fused[:m], coef, hue, counts)
    fns = [ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation, ops.adjust_hue]
    for row, i in enumerate(perm.tolist()):
        ref = x[i:i + 1]
        if apply[i]:
            for op in order[i].tolist():
                ref = fns[op](ref, factors[i, op:op + 1])
        torch.testing.assert_close(fused[row], ref[0], atol=2e-3, rtol=0)


def test_gaussian_kernel_is_torchvisions():
    k = ops.gaussian_kernel1d(torch.tensor([0.5, 2.0]), 6)
    t = np.arange(-6, 7)
    for row, s in zip(k, [0.5, 2.0]):
        ref = np.exp(-0.5 * (t / s) ** 2)
        np.testing.assert_allclose(row.numpy(), ref / ref.sum(), rtol=1e-5, atol=1e-7)


def _blur_ref(img, sigma, radius):
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    rows = sum(k[i] * p[:, :, i:i + img.shape[2]] for i in range(len(k)))
    return sum(k[i] * rows[:, i:i + img.shape[1], :] for i in range(len(k)))


@pytest.mark.parametrize("size", [16, 32, 80])
def test_gaussian_blur_matches_reference(photos, size):
    x = F.interpolate(photos, size=(size, size), mode="bilinear", align_corners=False)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.7])
    out = ops.gaussian_blur(x, sigma, 6)
    for n in range(6):
        np.testing.assert_allclose(_np(out[n]), _blur_ref(_np(x[n]), float(sigma[n]), 6), atol=2e-3)


def test_gaussian_blur_radius_clipped_to_tiny_images():
    x = torch.rand(2, 3, 4, 4) * 255
    out = ops.gaussian_blur(x, torch.tensor([2.0, 0.3]), 6)
    np.testing.assert_allclose(_np(out[0]), _blur_ref(_np(x[0]), 2.0, 3), atol=2e-3)


def test_apply_rows_and_normalize(photos):
    x = photos.clone()
    ops.apply_rows(x, torch.tensor([1, 4]), ops.solarize)
    assert torch.equal(x[1], ops.solarize(photos[1:2])[0]) and torch.equal(x[0], photos[0])
    ops.apply_rows(x, torch.zeros(0, dtype=torch.long), ops.solarize)
    out = ops.normalize_into(photos, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    torch.testing.assert_close(out, normalize(photos), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(cifar_batch):
    images, hw = cifar_batch
    aug = small_aug()
    cpu = aug(images, hw, torch.Generator().manual_seed(0))
    gpu = aug(images.cuda(), hw.cuda(), torch.Generator().manual_seed(0))
    gpu2 = aug(images.cuda(), hw, torch.Generator().manual_seed(0))
    for a, b, c in zip(cpu, gpu, gpu2):
        assert b.is_cuda and torch.equal(b, c)
        assert (a - b.cpu()).abs().max() < 0.05
