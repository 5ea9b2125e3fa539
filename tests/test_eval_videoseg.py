"""Video object segmentation: the propagation core on hand-made features, J and F by hand, and a
short DAVIS-style sequence built from real CIFAR images with a moving object."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dinokit.errors import DataError
from dinokit.eval.davis_metrics import boundary_f_measure, evaluate_sequence, region_similarity
from dinokit.eval.videoseg import (PropagationConfig, evaluate_davis, labels_to_mask, list_sequences,
                                   neighbourhood_mask, propagate_labels, read_mask, segment_video, working_size,
                                   write_indexed_png)
from dinokit.models import vit_tiny


def test_neighbourhood_mask_matches_the_release_loops():
    h, w, r = 5, 7, 2
    ref = torch.zeros(h, w, h, w)
    for i in range(h):
        for j in range(w):
            for p in range(2 * r + 1):
                for q in range(2 * r + 1):
                    y, x = i - r + p, j - r + q
                    if 0 <= y < h and 0 <= x < w:
                        ref[i, j, y, x] = 1
    assert torch.equal(neighbourhood_mask(h, w, r), ref.reshape(h * w, h * w).bool())


def test_working_size_follows_the_release():
    assert working_size(480, 854, 480, 16) == (480, 832)   # DAVIS landscape: width to a multiple of 64
    assert working_size(854, 480, 480, 8) == (832, 480)
    assert working_size(96, 128, 96, 8) == (96, 128)
    assert working_size(100, 150, 100, 16) == (96, 128)   # shorter side to the patch grid


def _object_features(mask: np.ndarray, colour_noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Hand-made patch features ``[h*w, 3]``: "object colour" vs "background colour" + a little noise."""
    g = torch.Generator().manual_seed(seed)
    m = torch.from_numpy(mask.reshape(-1)).float()
    feats = torch.stack((m, 1 - m, torch.full_like(m, 0.3)), dim=1)
    return torch.nn.functional.normalize(feats + colour_noise * torch.rand(feats.shape, generator=g), dim=1)


def test_propagation_core_moves_the_mask_with_the_object():
    h, w = 10, 12
    masks = []
    for t in range(6):  # a 3x4-patch object moving one patch right per frame, half a patch down
        m = np.zeros((h, w), dtype=np.int64)
        m[2 + t // 2:5 + t // 2, 1 + t:5 + t] = 1
        masks.append(m)
    allowed = neighbourhood_mask(h, w, 2)
    first_labels = torch.nn.functional.one_hot(torch.from_numpy(masks[0].reshape(-1)), 2).T.float()
    sources, labels = [_object_features(masks[0], 0.05, 0)], [first_labels]
    for t in range(1, 6):
        target = _object_features(masks[t], 0.05, t)
        soft = propagate_labels(target, torch.stack(sources[-3:]), torch.stack(labels[-3:]), allowed, topk=5)
        assert soft.shape == (2, h * w)
        torch.testing.assert_close(soft.sum(dim=0), torch.ones(h * w))  # a convex mix of one-hot labels
        assert np.array_equal(soft.argmax(dim=0).reshape(h, w).numpy(), masks[t])
        sources.append(target)
        labels.append(soft)
    # Without the spatial window the propagation is the same here (colours decide), but a window of 0
    # keeps every patch's own label: the object cannot move.
    static = propagate_labels(_object_features(masks[1]), sources[0][None], first_labels[None],
                              neighbourhood_mask(h, w, 0), topk=5)
    assert np.array_equal(static.argmax(dim=0).reshape(h, w).numpy(), masks[0])


def test_labels_to_mask_upsamples_to_the_frame_size():
    soft = torch.zeros(3, 2 * 3)
    soft[0, :] = 1.0
    soft[:, 4] = torch.tensor([0.1, 0.9, 0.0])
    soft[:, 5] = torch.tensor([0.0, 0.2, 0.8])
    out = labels_to_mask(soft, (2, 3), 8, (20, 30))
    assert out.shape == (20, 30) and out.dtype == np.uint8
    assert out[2, 2] == 0 and out[15, 15] == 1 and out[15, 27] == 2


def test_region_and_boundary_scores_by_hand():
    gt = np.zeros((40, 40), dtype=bool)
    gt[10:20, 10:20] = True
    pred = np.zeros_like(gt)
    pred[10:20, 15:25] = True
    assert region_similarity(gt, pred) == pytest.approx(50 / 150)
    assert region_similarity(gt, gt) == 1.0
    assert region_similarity(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    void = np.zeros_like(gt)
    void[:, 20:] = True
    assert region_similarity(gt, pred, void) == pytest.approx(50 / 100)
    assert boundary_f_measure(gt, gt) == 1.0
    # Tolerance: ceil(0.008 * diagonal 56.6) = 1 pixel. A one-pixel shift is within it, five are not.
    shifted = np.roll(gt, 1, axis=1)
    assert boundary_f_measure(gt, shifted) == 1.0
    assert boundary_f_measure(gt, np.roll(gt, 5, axis=1)) < 0.6
    assert boundary_f_measure(gt, np.zeros_like(gt)) == 0.0
    assert boundary_f_measure(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_sequence_scores_skip_first_and_last_frames_and_void():
    gt = [np.zeros((8, 8), np.uint8) for _ in range(4)]
    for m in gt:
        m[2:6, 2:6] = 1
        m[0, 0] = 2
    gt[2][7, 7] = 255
    pred = [m.copy() for m in gt]
    pred[0][:] = 0          # first and last frames are not scored
    pred[3][:] = 0
    pred[2][7, 7] = 1       # void pixel: ignored
    pred[1][0, 0] = 0       # object 2 missed in frame 1
    scores = evaluate_sequence(gt, pred)
    assert scores["J"] == pytest.approx([1.0, 0.5])
    assert scores["F"][0] == 1.0 and scores["F"][1] == pytest.approx(0.5)


def test_masks_round_trip_as_palette_png(tmp_path):
    ids = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    palette = [0, 0, 0, 10, 20, 30, 40, 50, 60] + [0] * (3 * 253)
    write_indexed_png(tmp_path / "m.png", ids, palette)
    back, pal = read_mask(tmp_path / "m.png")
    assert np.array_equal(back, ids) and pal[:9] == palette[:9]
    write_indexed_png(tmp_path / "d.png", ids, None)  # DAVIS colours when there is no palette
    assert read_mask(tmp_path / "d.png")[1][3:6] == [128, 0, 0]


def make_sequence(cifar_root, root, frames=8, step=6):
    """DAVIS layout: a CIFAR car (40x40) moving ``step`` px right and step/2 down per frame over an
    upscaled CIFAR ship (128x96). Returns the ground-truth masks."""
    bg = Image.open(cifar_root / "train" / "ship" / "0003.jpg").convert("RGB").resize((128, 96), Image.BICUBIC)
    obj = Image.open(cifar_root / "train" / "automobile" / "0001.jpg").convert("RGB").resize((40, 40), Image.BICUBIC)
    seq_frames = root / "JPEGImages" / "480p" / "car"
    seq_ann = root / "Annotations" / "480p" / "car"
    seq_frames.mkdir(parents=True)
    seq_ann.mkdir(parents=True)
    palette = [0, 0, 0, 200, 30, 30] + [0] * (3 * 254)
    masks = []
    for t in range(frames):
        x, y = 12 + step * t, 20 + step // 2 * t
        im = bg.copy()
        im.paste(obj, (x, y))
        im.save(seq_frames / f"{t:05d}.jpg", quality=95)
        m = np.zeros((96, 128), np.uint8)
        m[y:y + 40, x:x + 40] = 1
        masks.append(m)
        write_indexed_png(seq_ann / f"{t:05d}.png", m, palette)
    return masks


def test_random_vit_tracks_a_moving_cifar_object(cifar_root, tmp_path):
    gt = make_sequence(cifar_root, tmp_path / "davis")
    torch.manual_seed(0)
    vit = vit_tiny(patch_size=8, img_size=64).eval()
    cfg = PropagationConfig(n_last_frames=7, size_mask_neighborhood=3, topk=5, frame_size=96)
    res = evaluate_davis(vit, tmp_path / "davis", tmp_path / "out", cfg)
    assert list_sequences(tmp_path / "davis") == ["car"]
    # Copying the first mask to every frame scores J = 27%; propagation follows the car.
    static = 100 * np.mean(evaluate_sequence(gt, [gt[0]] * len(gt))["J"])
    assert static < 30
    assert res["J_mean"] > 60 and res["J_mean"] > static + 25
    assert res["F_mean"] > 35
    assert res["JF_mean"] == pytest.approx((res["J_mean"] + res["F_mean"]) / 2)
    written = sorted((tmp_path / "out" / "car").iterdir())
    assert [p.name for p in written] == [f"{t:05d}.png" for t in range(8)]
    for p in written:
        with Image.open(p) as im:
            assert im.mode == "P" and im.size == (128, 96) and im.getpalette()[3:6] == [200, 30, 30]
    assert np.array_equal(read_mask(written[0])[0], gt[0])


def test_frames_batched_per_pass_give_the_masks_of_one_at_a_time(cifar_root, tmp_path):
    make_sequence(cifar_root, tmp_path / "davis", frames=8)
    frames = sorted((tmp_path / "davis" / "JPEGImages" / "480p" / "car").iterdir())
    first = read_mask(tmp_path / "davis" / "Annotations" / "480p" / "car" / "00000.png")[0]
    torch.manual_seed(0)
    vit = vit_tiny(patch_size=8, img_size=64).eval()
    runs = [segment_video(vit, frames, first, PropagationConfig(frame_size=64, size_mask_neighborhood=3,
                                                                batch_size=bs), precision="fp32")
            for bs in (1, 3, 6)]
    for masks in runs[1:]:
        assert len(masks) == 8 and all(np.array_equal(a, b) for a, b in zip(runs[0], masks))
    assert not np.array_equal(runs[0][1], runs[0][7])  # the car moved: the masks differ
    # A frame of another size in the sequence is named, not a shape error from the matrix product.
    Image.open(frames[4]).resize((256, 96)).save(frames[4])
    with pytest.raises(DataError, match="00004.jpg has another size"):
        segment_video(vit, frames, first, PropagationConfig(frame_size=64, batch_size=3))


def test_without_ground_truth_masks_are_written_but_not_scored(cifar_root, tmp_path):
    make_sequence(cifar_root, tmp_path / "davis", frames=3)
    for p in sorted((tmp_path / "davis" / "Annotations" / "480p" / "car").iterdir())[1:]:
        p.unlink()
    torch.manual_seed(0)
    vit = vit_tiny(patch_size=16, img_size=64).eval()
    res = evaluate_davis(vit, tmp_path / "davis", tmp_path / "out", PropagationConfig(frame_size=64, n_last_frames=0))
    assert "J_mean" not in res and res["sequences"]["car"] == {"frames": 3}
    assert len(list((tmp_path / "out" / "car").iterdir())) == 3


def test_masks_saved_as_rgb_or_binary_grey_read_as_ids(tmp_path):
    ids = np.array([[0, 1, 1], [2, 0, 1]], dtype=np.uint8)
    davis = np.array([[0, 0, 0], [128, 0, 0], [0, 128, 0]], dtype=np.uint8)  # DAVIS ids 0, 1, 2
    Image.fromarray(davis[ids]).save(tmp_path / "davis.png")
    assert np.array_equal(read_mask(tmp_path / "davis.png")[0], ids)
    own = np.array([[0, 0, 0], [200, 30, 30], [10, 220, 40]], dtype=np.uint8)  # colours DAVIS lacks
    Image.fromarray(own[ids]).save(tmp_path / "first.png")
    first, palette = read_mask(tmp_path / "first.png")
    assert palette[:9] == own[[0, 2, 1]].ravel().tolist()  # black, then the colours in sorted order
    assert np.array_equal(first, np.array([0, 2, 1])[ids])
    Image.fromarray(own[ids[::-1]]).save(tmp_path / "later.png")
    assert np.array_equal(read_mask(tmp_path / "later.png", palette)[0], first[::-1])  # same colour, same id
    Image.fromarray(np.full((2, 3, 3), 99, np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(DataError, match="colours that the first mask lacks"):
        read_mask(tmp_path / "odd.png", palette)
    Image.fromarray((ids > 0).astype(np.uint8) * 255).save(tmp_path / "binary.png")
    assert np.array_equal(read_mask(tmp_path / "binary.png")[0], (ids > 0).astype(np.uint8))


def test_davis_folders_that_cannot_be_scored(cifar_root, tmp_path):
    make_sequence(cifar_root, tmp_path / "davis", frames=3)
    (tmp_path / "list.txt").write_text("car\nbus\n")
    with pytest.raises(DataError, match="have no frames folder below .*: bus"):
        list_sequences(tmp_path / "davis", video_list=str(tmp_path / "list.txt"))
    first = tmp_path / "davis" / "Annotations" / "480p" / "car" / "00000.png"
    write_indexed_png(first, np.zeros((96, 128), np.uint8), None)
    vit = vit_tiny(patch_size=16, img_size=64).eval()
    with pytest.raises(DataError, match="first mask 00000.png marks no object"):
        evaluate_davis(vit, tmp_path / "davis", tmp_path / "out", PropagationConfig(frame_size=64))

