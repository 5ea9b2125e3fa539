"""The demo's k-NN numbers and `dinokit knn` on the same checkpoint agree."""

from __future__ import annotations

import json
import subprocess
import sys

from test_train_loop import tiny_config

from dinokit.demo import knn_baselines
from dinokit.models import load_pretrained
from dinokit.train import train


def test_cli_knn_reproduces_the_demo_number(cifar_small, tmp_path):
    # the demo's k-NN runs on the CPU; on a GPU the CLI's float rounding could move one test image
    train_dir, test_dir = cifar_small
    train(tiny_config(train_dir, tmp_path, epochs=1))
    teacher = load_pretrained(tmp_path / "checkpoint.pth")
    demo = knn_baselines(teacher, str(train_dir), str(test_dir), image_size=32)
    weights = str(tmp_path / "checkpoint.pth")
    out = subprocess.run([sys.executable, "-m", "dinokit", "knn", "--pretrained_weights", weights,
                          "--train_path", str(train_dir), "--val_path", str(test_dir), "--image_size", "32",
                          "--nb_knn", "20", "--device", "cpu", "--quiet"],
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    top1 = result["results"]["20"]["top1"] if "results" in result else result["20"]["top1"]
    assert round(top1, 2) == demo["dino"]
    assert 10 < demo["raw_pixels"] < 60 and 0 < demo["random_init"] < 60


def test_running_the_demo_again_evaluates_the_same_run(cifar_small, tmp_path, caplog):
    from dinokit.demo import run_demo

    root = cifar_small[0].parent  # train/ and test/
    first = run_demo(str(tmp_path / "demo"), str(root), minutes=0.05)
    with caplog.at_level("INFO", logger="dinokit.demo"):
        again = run_demo(str(tmp_path / "demo"), str(root), minutes=0.05)
    assert "holds an earlier demo run: resuming it" in caplog.text
    assert again["knn_top1"] == first["knn_top1"]  # the same checkpoint, not a new run
    assert abs(again["minutes"] - first["minutes"]) < 0.05  # its training time, not the few seconds of this call
    assert json.loads((tmp_path / "demo" / "demo_result.json").read_text())["knn_top1"] == first["knn_top1"]


def test_demo_finds_the_bundled_images_from_any_folder(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    import pytest

    from dinokit.cli.main import main
    from dinokit.demo import demo_data
    from dinokit.errors import DataError

    bundled = Path(__file__).resolve().parents[1] / "data" / "cifar10-demo"
    monkeypatch.chdir(tmp_path)  # not the clone: the default relative path finds nothing here
    assert demo_data(Path("data/cifar10-demo")) == bundled and (bundled / "test").is_dir()
    with pytest.raises(DataError, match="pass --data_root DIR with train/ and test/"):
        demo_data(tmp_path / "elsewhere")
    assert main(["demo", "--data_root", "elsewhere", "--output_dir", "out"]) == 2
    assert "no demo images at elsewhere/train" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
