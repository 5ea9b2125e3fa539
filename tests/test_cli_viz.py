"""``dinokit attention``, ``attention-video`` and ``report`` on real CIFAR images with a random-init ViT."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dinokit.cli.main import main
from dinokit.models import vit_tiny


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vit_tiny4.pth"
    torch.save(vit_tiny(patch_size=4).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def cats(tmp_path_factory, cifar_root):
    """A flat folder of 3 real CIFAR cat images."""
    folder = tmp_path_factory.mktemp("cats")
    for f in sorted((cifar_root / "test" / "cat").iterdir())[:3]:
        shutil.copy(f, folder / f.name)
    return folder


def test_attention_single_image(weights, cats, tmp_path, capsys):
    image = sorted(cats.iterdir())[0]
    rc = main(["attention", "--pretrained", str(weights), "--image", str(image), "--output_dir",
               str(tmp_path), "--image_size", "48", "--threshold", "0.6"])
    assert rc == 0
    assert "14 PNGs" in capsys.readouterr().out
    for name in ["img.png", "attn-mean.png", "attn-overlay.png", "mask-overlay.png", "mask-mean.png"] + [
            f"{k}{i}.png" for i in range(3) for k in ("attn-head", "mask-head", "mask_th0.6_head")]:
        assert Image.open(tmp_path / name).size == (48, 48), name  # 32 px image, shorter side to 48
    mask = np.asarray(Image.open(tmp_path / "mask-head0.png"))
    assert set(np.unique(mask)) <= {0, 255} and (mask > 0).any()
    assert main(["attention", "--pretrained", str(weights), "--image", str(image), "--output_dir",
                 str(tmp_path / "kept"), "--image_size", "0"]) == 0  # 0: the image's own size
    assert Image.open(tmp_path / "kept" / "attn-mean.png").size == (32, 32)


def test_attention_size_follows_a_small_image_run(cats, tmp_path, caplog):
    from dinokit.cli.attention import _default_size

    torch.manual_seed(0)
    small = tmp_path / "cifar_vit.pth"
    torch.save(vit_tiny(patch_size=8, img_size=32).state_dict(), small)  # trained at 32 px: a 4 x 4 grid
    with caplog.at_level("INFO", logger="dinokit"):
        assert main(["attention", "--pretrained_weights", str(small), "--image_path", str(sorted(cats.iterdir())[0]),
                     "--output_dir", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "attn-mean.png").size == (128, 128)  # not the release's 480
    assert "attention at 128 px: 4x the 32 px" in caplog.text
    assert _default_size(224) == (480, 480) and _default_size(None) == (480, 480)  # release weights


def test_attention_folder_and_jaccard(weights, cats, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["attention", "--pretrained_weights", str(weights), "--image_path", str(cats), "--output_dir",
            str(out), "--image_size", "32", "32", "--threshold", "0.6"]
    assert main(args) == 0
    stems = sorted(p.stem for p in cats.iterdir())
    assert sorted(p.name for p in out.iterdir()) == stems  # one sub-folder per image
    assert all(Image.open(out / s / "attn-head2.png").size == (32, 32) for s in stems)
    assert not (out / stems[0] / "attn-head3.png").exists()  # vit_tiny has 3 heads

    # ground truth = the mean-attention masks just written (two of the three images): Jaccard 1
    gt = tmp_path / "gt"
    gt.mkdir()
    for s in stems[:2]:
        shutil.copy(out / s / "mask-mean.png", gt / f"{s}.png")
    capsys.readouterr()
    assert main(args[:-2] + ["--gt_masks", str(gt), "--output_dir", str(tmp_path / "out2")]) == 0  # t = 0.6
    text = capsys.readouterr().out
    assert "mean over 2 images" in text and "1 images without a mask skipped" in text
    scores = json.loads((tmp_path / "out2" / "jaccard.json").read_text())
    assert scores["threshold"] == 0.6 and scores["mean"]["mean"] == pytest.approx(1.0)
    assert 0.0 <= scores["mean"]["union"] <= 1.0 and len(scores["images"]) == 2


def test_attention_video_gif(weights, cats, tmp_path, capsys):
    out = tmp_path / "att.gif"
    rc = main(["attention-video", "--pretrained_weights", str(weights), "--input", str(cats),
               "--output", str(out), "--fps", "4", "--threshold", "0.5", "--image_size", "32", "32"])
    assert rc == 0 and f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as gif:
        assert gif.n_frames == 3 and gif.size == (64, 32)
    # The release's video_generation.py flags: an output folder, a format, --video_only.
    rc = main(["attention-video", "--pretrained_weights", str(weights), "--input_path", str(cats), "--output_path",
               str(tmp_path / "release"), "--video_format", "gif", "--video_only", "--resize", "32", "32"])
    assert rc == 0 and f"wrote {tmp_path / 'release' / 'video.gif'}" in capsys.readouterr().out
    assert Image.open(tmp_path / "release" / "video.gif").n_frames == 3


def test_report_command(tmp_path, cats, capsys):
    from test_viz_report import make_run_dir

    run = make_run_dir(tmp_path / "run", cats, epochs=2)
    assert main(["report", str(run), "--attention_images", "2"]) == 0
    assert str(run / "report.html") in capsys.readouterr().out
    assert (run / "report" / "attention.png").is_file()


def test_user_errors_are_one_line(weights, tmp_path, capsys):
    base = ["attention", "--pretrained_weights", str(weights), "--output_dir", str(tmp_path)]
    assert main(base + ["--image_path", str(tmp_path / "missing.jpg")]) == 2
    assert "neither an image file nor a folder" in capsys.readouterr().err
    assert main(base + ["--image_path", str(tmp_path), "--threshold", "1.5"]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2  # a folder, but not a run: nothing written into it
    assert "is not a training run's --output_dir" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "report").exists()
    assert main(["demo", "--minutes", "0", "--output_dir", str(tmp_path / "demo")]) == 2
    assert "argument --minutes: expected a positive number, got '0'" in capsys.readouterr().err
    assert main(["attention-video", "--pretrained_weights", str(weights), "--input", str(tmp_path),
                 "--output", str(tmp_path / "x.png")]) == 2
    assert ".gif or .mp4" in capsys.readouterr().err
    for flag, value in (("--fps", "0"), ("--max_frames", "0")):
        assert main(["attention-video", "--pretrained_weights", str(weights), "--input", str(tmp_path),
                     "--output", str(tmp_path / "x.gif"), flag, value]) == 2
        assert f"argument {flag}: expected" in capsys.readouterr().err


def test_images_that_do_not_decode(weights, cats, tmp_path, capsys, caplog):
    folder = tmp_path / "mixed"
    shutil.copytree(cats, folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    base = ["attention", "--pretrained_weights", str(weights), "--image_size", "48"]
    assert main(base + ["--image_path", str(folder), "--output_dir", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out.count("PNGs") == 3  # the three cats; the broken file is logged
    assert "broken.jpg" in caplog.text and not (tmp_path / "a" / "broken").exists()
    assert main(base + ["--image_path", str(folder / "broken.jpg"), "--output_dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.jpg" in err and "cannot identify image" in err
    for name in ("x.jpg", "y.jpg"):
        (tmp_path / "bad" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "bad" / name).write_bytes(b"\x00" * 10)
    assert main(base + ["--image_path", str(tmp_path / "bad"), "--output_dir", str(tmp_path / "c")]) == 2
    assert "none of the 2 images could be decoded" in capsys.readouterr().err


def test_attention_maps_written_inside_the_image_folder_are_not_read_back(weights, cats, tmp_path, capsys):
    folder = tmp_path / "cats"
    shutil.copytree(cats, folder)
    args = ["attention", "--pretrained_weights", str(weights), "--image_path", str(folder),
            "--output_dir", str(folder / "maps"), "--image_size", "32"]
    for _ in range(2):
        assert main(args) == 0
        assert capsys.readouterr().out.count("PNGs") == 3


def test_a_damaged_video_is_one_short_line(weights, tmp_path, capsys):
    pytest.importorskip("imageio")
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 10)
    assert main(["attention-video", "--pretrained_weights", str(weights), "--input", str(tmp_path / "broken.mp4"),
                 "--output", str(tmp_path / "out.gif")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read video" in err and "configuration:" not in err and len(err) < 400
