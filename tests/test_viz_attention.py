"""Attention maps, threshold masks, Jaccard and attention animations: the numbers behind the pictures."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dinokit.data import load_rgb, normalize, pil_to_uint8
from dinokit.errors import DinokitError
from dinokit.models import vit_tiny
from dinokit.viz.attention import (align_mask, colorize, compute_attention, fit_to_patches, last_attention,
                                   mask_overlay, overlay, save_attention_images, upsample)
from dinokit.viz.masks import jaccard, kept_mass, load_gt_mask, mask_jaccards, threshold_mask
from dinokit.viz.video import attention_video, read_frames, write_animation


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return vit_tiny(patch_size=4, img_size=32).eval()


@pytest.fixture(scope="module")
def cat(cifar_root):
    return load_rgb(sorted((cifar_root / "test" / "cat").iterdir())[0])


def official_threshold(attentions: torch.Tensor, threshold: float) -> torch.Tensor:
    """The code of DINO's visualize_attention.py, verbatim in substance."""
    val, idx = torch.sort(attentions)
    val /= torch.sum(val, dim=1, keepdim=True)
    cumval = torch.cumsum(val, dim=1)
    th_attn = cumval > (1 - threshold)
    idx2 = torch.argsort(idx)
    for head in range(attentions.shape[0]):
        th_attn[head] = th_attn[head][idx2[head]]
    return th_attn


def test_attention_rows_sum_to_one_on_a_real_image(model, cat):
    x = normalize(pil_to_uint8(fit_to_patches(cat, (32, 32), 4)))
    with torch.no_grad():
        full = model.get_last_selfattention(x[None])
    assert full.shape == (1, 3, 65, 65)
    torch.testing.assert_close(full.sum(-1), torch.ones(1, 3, 65), atol=1e-5, rtol=0)
    attn = last_attention(model, x)
    assert attn.shape == (3, 8, 8)
    torch.testing.assert_close(attn, full[0, :, 0, 1:].reshape(3, 8, 8))
    assert (attn.sum((1, 2)) < 1).all()  # the class token's own share is left out
    # the memory-light path (used for large images) gives the same numbers
    torch.testing.assert_close(last_attention(model, x, max_full_tokens=1), attn, atol=1e-6, rtol=0)


@pytest.mark.parametrize("t", [0.1, 0.3, 0.6, 0.9, 1.0])
def test_threshold_mask_keeps_the_minimal_top_share(t):
    torch.manual_seed(1)
    attn = torch.softmax(torch.randn(4, 100) * 2, dim=-1)
    mask = threshold_mask(attn, t)
    assert mask.dtype == torch.bool and mask.shape == attn.shape
    assert torch.equal(mask, official_threshold(attn.clone(), t))
    mass = kept_mass(attn, mask)
    assert (mass >= t - 1e-6).all()
    for head in range(4):
        kept, dropped = attn[head][mask[head]], attn[head][~mask[head]]
        assert len(dropped) == 0 or kept.min() >= dropped.max()  # the largest values are kept
        assert (kept.sum() - kept.min()) / attn[head].sum() < t  # dropping one more falls short


def test_threshold_mask_hand_case_and_3d_input():
    attn = torch.tensor([[0.5, 0.3, 0.1, 0.1]])
    assert threshold_mask(attn, 0.6).tolist() == [[True, True, False, False]]
    assert threshold_mask(attn, 0.5).tolist() == [[True, False, False, False]]
    grid = threshold_mask(attn.reshape(1, 2, 2), 0.6)
    assert grid.shape == (1, 2, 2) and grid.tolist() == [[[True, True], [False, False]]]
    with pytest.raises(ValueError):
        threshold_mask(attn, 1.5)


def test_jaccard_hand_cases():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert jaccard(a, b) == 1.0  # both empty
    a[:2] = True
    assert jaccard(a, b) == 0.0
    b[1:3] = True  # overlap one row of 4, union 3 rows
    assert jaccard(a, b) == pytest.approx(1 / 3)
    assert jaccard(a, a) == 1.0
    with pytest.raises(ValueError):
        jaccard(a, np.zeros((2, 2), bool))
    masks = np.stack([a, b, ~a])
    scores = mask_jaccards(masks, mean_mask=b, gt=b)
    assert scores["best_head"] == 1.0 and scores["best_head_index"] == 1
    assert scores["mean"] == 1.0 and scores["union"] == pytest.approx(8 / 16)


def test_fit_to_patches_sizes():
    im = Image.new("RGB", (50, 37))
    assert fit_to_patches(im, (40, 30), 8).size == (24, 40)  # (H, W) exact, then crop to multiples
    assert fit_to_patches(im, 20, 4).size == (24, 20)  # shorter side 20 -> 27x20 -> 24x20
    assert fit_to_patches(im, None, 16).size == (48, 32)
    with pytest.raises(DinokitError):
        fit_to_patches(Image.new("RGB", (3, 3)), None, 4)


def test_compute_attention_maps_and_masks_have_the_image_size(model, cat):
    maps = compute_attention(model, cat, image_size=(40, 30), threshold=0.6)
    h, w = 40, 28
    assert maps.image.shape == (h, w, 3) and maps.image.dtype == np.uint8
    assert maps.patch_attn.shape == (3, 10, 7)
    assert maps.attn.shape == (3, h, w) and maps.masks.shape == (3, h, w) and maps.masks.dtype == bool
    assert maps.mean_mask.shape == (h, w)
    # nearest upsampling: each patch is a constant 4x4 block, masks match the patch-level rule
    np.testing.assert_array_equal(maps.attn[:, ::4, ::4], maps.patch_attn.numpy())
    np.testing.assert_array_equal(maps.masks[:, ::4, ::4], threshold_mask(maps.patch_attn, 0.6).numpy())
    assert (kept_mass(maps.patch_attn, maps.masks[:, ::4, ::4]) >= 0.6 - 1e-6).all()


def test_upsample_colorize_overlay():
    m = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    up = upsample(m, 3)
    assert up.shape == (1, 6, 6) and up[0, 5, 5] == 3.0 and up[0, 0, 2] == 0.0
    assert upsample(m > 1, 2).dtype == bool
    rgb = colorize(up[0])
    assert rgb.shape == (6, 6, 3) and rgb.dtype == np.uint8
    assert not np.array_equal(rgb[0, 0], rgb[5, 5])
    img = np.full((6, 6, 3), 100, np.uint8)
    where = np.zeros((6, 6), bool)
    where[0, 0] = True
    out = overlay(img, [200, 200, 200], 0.5, where=where)
    assert out[0, 0].tolist() == [150, 150, 150] and out[1, 1].tolist() == [100, 100, 100]
    assert mask_overlay(img, where[None]).shape == (6, 6, 3)


def test_save_attention_images(model, cat, tmp_path):
    maps = compute_attention(model, cat, image_size=(32, 32), threshold=0.5)
    paths = save_attention_images(maps, tmp_path / "out")
    names = {p.name for p in paths}
    expected = {"img.png", "attn-mean.png", "attn-overlay.png", "mask-overlay.png", "mask-mean.png"}
    expected |= {f"{k}{i}.png" for i in range(3) for k in ("attn-head", "mask-head", "mask_th0.5_head")}
    assert names == expected
    for p in paths:
        assert Image.open(p).size == (32, 32)
    saved = np.asarray(Image.open(tmp_path / "out" / "mask-head1.png")) > 0
    np.testing.assert_array_equal(saved, maps.masks[1])


def test_gt_mask_alignment(tmp_path):
    a = np.zeros((20, 30), np.uint8)
    a[5:15, 10:20] = 3  # any nonzero label is foreground
    Image.fromarray(a).save(tmp_path / "gt.png")
    gt = load_gt_mask(tmp_path / "gt.png")
    aligned = align_mask(gt, (30, 20), (40, 60), 8)  # doubled, cropped to 40 x 56
    assert aligned.shape == (40, 56) and aligned.sum() == 20 * 20
    assert aligned[10:30, 20:40].all()


def _frames(cifar_root, folder, n=3):
    folder.mkdir()
    for i, f in enumerate(sorted((cifar_root / "test" / "dog").iterdir())[:n]):
        load_rgb(f).save(folder / f"frame{i:03d}.png")
    return folder


def test_attention_video_gif(model, cifar_root, tmp_path):
    frames = _frames(cifar_root, tmp_path / "frames")
    Image.open(frames / "frame002.png").resize((48, 40)).save(frames / "frame002.png")
    out = attention_video(model, frames, tmp_path / "a.gif", fps=5, threshold=0.6)
    with Image.open(out) as gif:  # frame and attention side by side, all at the first frame's size
        assert gif.n_frames == 3 and gif.size == (64, 32)
        assert gif.info["duration"] == 200
    assert len(list(read_frames(out))) == 3  # a GIF is also an input


def test_attention_video_mp4(model, cifar_root, tmp_path):
    iio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    frames = _frames(cifar_root, tmp_path / "frames", n=4)
    out = attention_video(model, frames, tmp_path / "a.mp4", fps=4, image_size=(20, 24))
    with iio.get_reader(str(out)) as r:
        got = [f for f in r]
    assert len(got) == 4 and got[0].shape == (20, 48, 3)
    assert len(list(read_frames(out, max_frames=2))) == 2


def test_video_without_imageio_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "imageio", None)
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    with pytest.raises(DinokitError, match=r"pip install 'dinokit\[video\]'"):
        write_animation([np.zeros((4, 4, 3), np.uint8)], tmp_path / "x.mp4", fps=1)
    with pytest.raises(DinokitError, match="pip install"):
        list(read_frames(_touch(tmp_path / "v.mp4")))
    write_animation([np.zeros((4, 4, 3), np.uint8)], tmp_path / "x.gif", fps=1)  # GIF needs only PIL


def _touch(p):
    p.write_bytes(b"\0")
    return p
