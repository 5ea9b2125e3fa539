"""The evaluation commands: flags, outputs (text + final JSON line), files, one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from dinokit.cli.main import build_parser, main
from dinokit.eval.features import Features, load_features
from dinokit.eval.knn import knn_evaluate
from dinokit.models import vit_tiny

COMMON = ["--image_size", "32", "--num_workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vit_tiny4.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in vit_tiny(patch_size=4, img_size=32).state_dict().items()},
                "epoch": 3}, path)
    return str(path)


def run(capsys, *argv) -> tuple[int, dict, str]:
    """Exit code, the final JSON line (or {}), and stderr."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return rc, (json.loads(lines[-1]) if rc == 0 else {}), err


def test_help_lists_the_commands():
    text = build_parser().format_help()
    for name in ("extract", "knn", "linear", "retrieve", "copydetect", "videoseg"):
        assert name in text


def test_extract_then_knn_on_saved_features(capsys, weights, cifar_small, tmp_path):
    train_dir, test_dir = cifar_small
    rc, info, _ = run(capsys, "extract", "--data_path", train_dir, "--output", tmp_path / "train.npz",
                      "--pretrained_weights", weights, "--image_size", "32", "--num_workers", "1", "--quiet")
    assert rc == 0 and info["images"] == 300 and info["dim"] == 192 and info["classes"] == 10
    rc, info, _ = run(capsys, "extract", "--data_path", test_dir, "--output", tmp_path / "val.pt",
                      "--pretrained_weights", weights, *COMMON)
    assert rc == 0
    train, val = load_features(tmp_path / "train.npz"), load_features(tmp_path / "val.pt")
    rc, info, _ = run(capsys, "knn", "--load_features", tmp_path / "train.npz", tmp_path / "val.pt",
                      "--nb_knn", "5", "20")
    expected = knn_evaluate(train.features, train.labels, val.features, val.labels, ks=(5, 20))
    assert rc == 0 and info["train"] == 300 and info["val"] == 100
    assert info["results"]["20"]["top1"] == pytest.approx(expected[20]["top1"])
    assert info["results"]["5"]["top5"] == pytest.approx(expected[5]["top5"])


def test_export_writes_the_release_layout_that_evaluates_the_same(capsys, caplog, weights, cifar_small, tmp_path):
    train_dir, test_dir = cifar_small
    knn = ["knn", "--train_path", train_dir, "--val_path", test_dir, "--nb_knn", "20", "--num_workers", "0", "--quiet"]
    rc, reference, _ = run(capsys, *knn, "--pretrained_weights", weights, "--image_size", "32")
    for name in ("vit.pth", "vit.safetensors"):
        rc, info, _ = run(capsys, "export", weights, "--output", tmp_path / name)
        assert rc == 0 and info["arch"] == "vit_tiny/4" and info["image_size"] == 32
        assert not list(tmp_path.glob(".*")), "a temporary file of the atomic write was left behind"
        if name.endswith(".pth"):  # a bare state dict, as the release's *_pretrain.pth files
            sd = torch.load(tmp_path / name, weights_only=True)
            vit_tiny(patch_size=4, img_size=32).load_state_dict(sd, strict=True)
        # No size flag: the exported file still evaluates at 32 px (its position embedding tells).
        with caplog.at_level("INFO", logger="dinokit"):
            rc, again, _ = run(capsys, *knn, "--pretrained_weights", tmp_path / name)
        assert rc == 0 and again["results"] == reference["results"] and "images at 32 px" in caplog.text
    rc, _, err = run(capsys, "export", weights, "--output", tmp_path / "s.pth", "--checkpoint_key", "student")
    assert rc == 2 and err.count("\n") == 1 and not (tmp_path / "s.pth").exists()


def test_knn_from_folders_dump_and_reload(capsys, weights, cifar_small, tmp_path):
    train_dir, test_dir = cifar_small
    rc, info, _ = run(capsys, "knn", "--data_path", train_dir.parent, "--pretrained_weights", weights,
                      "--dump_features", tmp_path / "dump", "--nb_knn", "10", "20", *COMMON)
    assert rc == 0 and set(info["results"]) == {"10", "20"}
    assert (tmp_path / "dump" / "train.pt").is_file() and (tmp_path / "dump" / "val.pt").is_file()
    rc2, again, _ = run(capsys, "knn", "--load_features", tmp_path / "dump", "--nb_knn", "10", "20")
    assert rc2 == 0 and again["results"] == info["results"]
    # The release's four files (what its eval_knn.py --load_features reads): L2-normalised rows.
    rc, _, _ = run(capsys, "knn", "--data_path", train_dir.parent, "--pretrained_weights", weights,
                   "--dump_features", tmp_path / "release", "--dump_format", "release", *COMMON)
    feats = torch.load(tmp_path / "release" / "trainfeat.pth", weights_only=True)
    labels = torch.load(tmp_path / "release" / "testlabels.pth", weights_only=True)
    assert rc == 0 and feats.shape == (300, 192) and labels.shape == (100,)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(300))
    rc, from_release, _ = run(capsys, "knn", "--load_features", tmp_path / "release", "--nb_knn", "10", "20")
    assert rc == 0 and from_release["results"] == info["results"]
    rc3, split, _ = run(capsys, "knn", "--train_path", train_dir, "--val_path", test_dir, "--pretrained_weights",
                        weights, "--nb_knn", "10", "20", "--precision", "fp32", *COMMON)
    assert rc3 == 0 and split["results"]["20"]["top1"] == pytest.approx(info["results"]["20"]["top1"], abs=2.0)


def test_knn_on_two_classes_and_k_beyond_the_train_set(capsys, caplog, weights, cifar_small, tmp_path):
    for split, folder in zip(("train", "val"), cifar_small):
        for name in ("cat", "dog"):
            shutil.copytree(folder / name, tmp_path / split / name)
    with caplog.at_level("WARNING", logger="dinokit"):
        rc, info, _ = run(capsys, "knn", "--data_path", tmp_path, "--pretrained_weights", weights,
                          "--nb_knn", "5", "100", *COMMON)
    assert rc == 0 and info["train"] == 60
    # Top-5 of two classes would be 100% whatever the features: reported as missing, as linear does.
    assert all(r["top5"] is None and 0 <= r["top1"] <= 100 for r in info["results"].values())
    assert "100-NN: only 60 train images, so every one of them votes" in caplog.text
    assert "5-NN:" not in caplog.text


def test_resnet_features_say_the_vit_flags_do_not_apply(capsys, caplog, cifar_small, tmp_path):
    from dinokit.models import resnet18_cifar

    torch.save(resnet18_cifar().state_dict(), tmp_path / "r18.pth")
    with caplog.at_level("INFO", logger="dinokit"):
        rc, info, _ = run(capsys, "extract", "--data_path", cifar_small[1], "--output", tmp_path / "f.pt",
                          "--pretrained_weights", tmp_path / "r18.pth", "--n_last_blocks", "4", *COMMON)
    assert rc == 0 and info["dim"] == 256  # the pooled feature, not 4 x 256
    assert "--n_last_blocks and --avgpool_patchtokens apply to ViTs only" in caplog.text


def test_linear_evaluate_without_a_classifier_takes_the_release_one(capsys, cifar_small, tmp_path, monkeypatch):
    from dinokit.models import vit_small

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # the release files, "downloaded" before
    (tmp_path / "checkpoints").mkdir()
    torch.manual_seed(0)
    torch.save(vit_small(patch_size=16).state_dict(), tmp_path / "checkpoints" / "dino_deitsmall16_pretrain.pth")
    linear = torch.nn.Linear(4 * 384, 10)  # eval_linear.py's layout: a DDP-wrapped LinearClassifier
    state = {f"module.linear.{k}": v.detach() for k, v in linear.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "checkpoints" / "dino_deitsmall16_linearweights.pth")
    rc, info, _ = run(capsys, "linear", "--evaluate", "--arch", "vit_small", "--patch_size", "16", "--data_path",
                      cifar_small[1].parent, "--n_last_blocks", "4", *COMMON)
    assert rc == 0 and info["evaluate"] is True and info["val"] == 100 and 0 <= info["top1"] <= 100


def test_linear_trains_saves_and_evaluates(capsys, weights, cifar_small, tmp_path):
    data = cifar_small[0].parent
    out = tmp_path / "linear"
    rc, info, _ = run(capsys, "linear", "--data_path", data, "--pretrained_weights", weights, "--epochs", "3",
                      "--lr", "0.5", "--n_last_blocks", "1", "--avgpool_patchtokens", "true", "--output_dir", out,
                      *COMMON)
    assert rc == 0 and info["train"] == 300 and info["val"] == 100 and info["epochs"] == 3
    assert (out / "linear.pth").is_file()
    log_rows = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log_rows] == [0, 1, 2]
    ckpt = torch.load(out / "linear.pth", weights_only=True)
    assert ckpt["state_dict"]["linear.weight"].shape == (10, 2 * 192) and ckpt["avgpool_patchtokens"] is True
    rc, again, _ = run(capsys, "linear", "--evaluate", "--pretrained_linear", out / "linear.pth", "--data_path", data,
                       "--pretrained_weights", weights, "--n_last_blocks", "1", "--avgpool_patchtokens", *COMMON)
    assert rc == 0 and again["top1"] == pytest.approx(info["top1"], abs=1.0)
    rc, _, err = run(capsys, "linear", "--evaluate", "--pretrained_linear", out / "linear.pth", "--data_path", data,
                     "--pretrained_weights", weights, "--n_last_blocks", "3", *COMMON)
    assert rc == 2 and "n_last_blocks" in err


def test_linear_augmented_path(capsys, weights, cifar_small, tmp_path):
    rc, info, _ = run(capsys, "linear", "--data_path", cifar_small[0].parent, "--pretrained_weights", weights,
                      "--epochs", "1", "--augment", "--n_last_blocks", "1", "--output_dir", tmp_path, *COMMON)
    assert rc == 0 and info["augment"] is True and 0 <= info["top1"] <= 100


def test_retrieve_and_copydetect_commands(capsys, weights, cifar_small, tmp_path):
    train_dir, test_dir = cifar_small
    rc, info, _ = run(capsys, "retrieve", "--query", test_dir, "--gallery", train_dir, "--pretrained_weights",
                      weights, "--imsize", "32", "--batch_size_per_gpu", "16", "--num_workers", "0", "--quiet",
                      "--use_cuda", "False")  # the release's flag: run on the CPU
    assert rc == 0 and info["layout"] == "folders" and info["queries"] == 100 and 0 < info["mAP"] < 100
    root = tmp_path / "copies"
    for name in ("query", "database"):
        (root / name).mkdir(parents=True)
    for f in sorted((test_dir / "cat").iterdir())[:6]:
        (root / "database" / f.name).write_bytes(f.read_bytes())
        (root / "query" / f.name).write_bytes(f.read_bytes())
    rc, info, _ = run(capsys, "copydetect", "--data_path", root, "--pretrained_weights", weights, "--imsize", "32",
                      "--num_workers", "0", "--quiet", "--use_cuda", "false")
    assert rc == 0 and info["queries"] == 6 and info["mAP"] == pytest.approx(100.0)


def test_copydetect_reads_the_copydays_layout_of_the_release(capsys, weights, cifar_small, tmp_path):
    root = tmp_path / "copydays"
    for name in ("original", "strong", "jpegqual/50"):
        (root / name).mkdir(parents=True)
    for i, f in enumerate(sorted((cifar_small[1] / "ship").iterdir())[:5]):
        Image.open(f).save(root / "original" / f"{2000 + i}00.jpg")
        Image.open(f).rotate(15).save(root / "strong" / f"{2000 + i}_s.jpg")  # same first 4 characters
    rc, info, _ = run(capsys, "copydetect", "--data_path", root, "--pretrained_weights", weights, "--imsize", "32",
                      "--num_workers", "0", "--quiet")
    assert rc == 0 and info["queries"] == 5 and info["database"] == 5 and 0 < info["mAP"] <= 100


def test_videoseg_command(capsys, cifar_root, tmp_path):
    from test_eval_videoseg import make_sequence

    make_sequence(cifar_root, tmp_path / "davis", frames=4)
    torch.manual_seed(0)
    path = tmp_path / "vit8.pth"
    torch.save(vit_tiny(patch_size=8, img_size=64).state_dict(), path)
    rc, info, _ = run(capsys, "videoseg", "--data_path", tmp_path / "davis", "--output_dir", tmp_path / "out",
                      "--pretrained_weights", path, "--frame_size", "96", "--size_mask_neighborhood", "3", "--bs", "2")
    assert rc == 0 and info["sequences"] == 1 and 0 <= info["J_mean"] <= 100
    assert len(list((tmp_path / "out" / "car").glob("*.png"))) == 4


@pytest.mark.parametrize("argv, message", [
    (["knn", "--data_path", "/nonexistent/folder", "--random_init"], "needs train/ and val/"),
    (["knn", "--random_init"], "give --data_path"),
    (["knn", "--train_path", "/x", "--random_init"], "give both --train_path and --val_path"),
    (["knn", "--train_path", __file__, "--val_path", "/tmp", "--random_init"], "is not a folder (it needs <class>"),
    (["knn", "--load_features", "/nonexistent.pt", "/nonexistent2.pt"], "does not exist"),
    (["linear", "--augment", "true", "--load_features", "/a.pt", "/b.pt"], "cannot use --load_features"),
    (["linear", "--n_last_blocks", "0", "--random_init"], "argument --n_last_blocks: expected an integer"),
    (["extract", "--data_path", "/tmp", "--output", "/tmp/x.pt", "--n_last_blocks", "0"],
     "argument --n_last_blocks: expected an integer of at least 1, got '0'"),
    (["extract", "--data_path", "/tmp", "--output", "/tmp/x.pt", "--pretrained_weights", "/missing.pth"],
     "neither a file"),
    (["extract", "--data_path", "/tmp", "--output", "/tmp/x.pt", "--arch", "vit_tiny"], "no vit_tiny/16"),
    (["retrieve", "--query", "/tmp", "--random_init"], "give both --query and --gallery"),
    (["export", "/nonexistent.pth", "--output", "backbone.txt"], "end the name with .pth (torch) or .safetensors"),
    (["copydetect", "--random_init"], "no query folder"),
    (["copydetect", "--data_path", "/tmp", "--match_prefix", "0"], "argument --match_prefix: expected an integer"),
    (["knn", "--data_path", "/tmp", "--num_workers", "-1"], "argument --num_workers: expected an integer of"),
    (["retrieve", "--query", "/tmp", "--batch_size_per_gpu", "0"], "argument --batch_size_per_gpu: expected an"),
    (["extract", "--data_path", "/tmp", "--output", "/tmp/x.pt", "--patch_size", "-8"], "argument --patch_size"),
    (["linear", "--data_path", "/tmp", "--lr", "nan"], "argument --lr: expected a positive number, got 'nan'"),
    (["videoseg", "--data_path", "/nonexistent", "--random_init"], "no DAVIS frames"),
    (["extract", "--data_path", "/tmp", "--output", "/tmp/never.pt", "--random_init", "--arch", "vit_tiny",
      "--patch_size", "8", "--image_size", "4"], "--image_size 4 is smaller than the 8 px patch"),
    (["copydetect", "--query", "/tmp", "--database", "/tmp", "--random_init", "--arch", "vit_tiny", "--imsize", "8"],
     "imsize 8 is smaller than the 16 px patch"),
])
def test_user_errors_are_one_line(capsys, argv, message):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"dinokit {argv[0]}: error:")


def test_a_failing_command_leaves_no_files(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["linear", "--data_path", str(tmp_path / "missing"), "--random_init"]) == 2
    assert main(["linear", "--augment", "--load_features", "a.pt", "b.pt"]) == 2
    assert main(["train", "--data_path", str(tmp_path / "missing"), "--output_dir", "run"]) == 2
    # Output folders a failing command had just made are removed; folders that were there stay.
    assert main(["knn", "--random_init", "--data_path", "missing", "--dump_features", "dump/deep"]) == 2
    assert main(["extract", "--random_init", "--data_path", "missing", "--output", "feats/f.pt"]) == 2
    (tmp_path / "kept").mkdir()
    assert main(["export", "missing.pth", "--output", "kept/b.pth"]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())
    capsys.readouterr()
    (tmp_path / "kept").rmdir()
    capsys.readouterr()
    assert list(tmp_path.iterdir()) == []


def test_feature_files_of_different_widths(capsys, tmp_path):
    Features(torch.randn(10, 8), torch.arange(10) % 2).save(tmp_path / "train.pt")
    Features(torch.randn(4, 16), torch.arange(4) % 2).save(tmp_path / "val.pt")
    for argv in (["knn", "--load_features", str(tmp_path)],
                 ["linear", "--load_features", str(tmp_path), "--epochs", "1", "--output_dir", str(tmp_path / "lin")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "train features are 8-d but val features 16-d" in err


def test_output_paths_are_checked_before_the_work(capsys, tmp_path):
    (tmp_path / "a_file").write_text("")
    Features(torch.randn(10, 8), torch.arange(10) % 2).save(tmp_path / "train.pt")
    Features(torch.randn(4, 8), torch.arange(4) % 2).save(tmp_path / "val.pt")
    blocked = str(tmp_path / "a_file" / "out")
    weights = str(tmp_path / "vit.pth")
    torch.save(vit_tiny(patch_size=16).state_dict(), weights)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    cases = [
        (["extract", "--random_init", "--arch", "vit_tiny", "--data_path", str(tmp_path), "--output", blocked + ".pt"],
         "the folder of --output"),
        (["extract", "--random_init", "--arch", "vit_tiny", "--data_path", str(tmp_path), "--output", str(tmp_path)],
         "is a folder: give a file name"),
        (["knn", "--random_init", "--data_path", str(tmp_path), "--dump_features", str(tmp_path / "a_file")],
         "--dump_features"),
        (["linear", "--load_features", str(tmp_path), "--output_dir", str(tmp_path / "a_file")],
         "is a file, not a folder"),
        (["attention", "--pretrained_weights", weights, "--image_path", str(tmp_path), "--output_dir", blocked],
         "--output_dir"),
        (["attention-video", "--pretrained_weights", weights, "--input", str(tmp_path), "--output", blocked + ".gif"],
         "--output"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_val_with_fewer_classes_is_matched_by_class_name(capsys, weights, cifar_small, tmp_path):
    train_dir, test_dir = cifar_small
    rc, _, _ = run(capsys, "knn", "--train_path", train_dir, "--val_path", test_dir, "--pretrained_weights",
                   weights, "--dump_features", tmp_path / "full", "--nb_knn", "20", *COMMON)
    assert rc == 0
    train, full = load_features(tmp_path / "full" / "train.pt"), load_features(tmp_path / "full" / "val.pt")
    partial = tmp_path / "partial"
    for cls in ("horse", "ship", "truck"):  # labels 0-2 in their own folder, 7-9 among the train classes
        shutil.copytree(test_dir / cls, partial / cls)
    rc, info, _ = run(capsys, "knn", "--train_path", train_dir, "--val_path", partial, "--pretrained_weights",
                      weights, "--nb_knn", "20", *COMMON)
    keep = full.labels >= 7
    expected = knn_evaluate(train.features, train.labels, full.features[keep], full.labels[keep], ks=(20,))
    assert rc == 0 and info["val"] == 30
    assert info["results"]["20"]["top1"] == pytest.approx(expected[20]["top1"], abs=1e-3)
    (partial / "unicorn").mkdir()
    shutil.copy(next((test_dir / "cat").iterdir()), partial / "unicorn" / "u.jpg")
    rc, _, err = run(capsys, "knn", "--train_path", train_dir, "--val_path", partial, "--pretrained_weights",
                     weights, *COMMON)
    assert rc == 2 and "val classes without a train folder: unicorn" in err and err.count("\n") == 1


def test_info_describes_feature_files_and_linear_probes(capsys, tmp_path):
    from dinokit.eval.linear import LinearClassifier

    Features(torch.randn(10, 8), torch.arange(10) % 2, classes=["cat", "dog"]).save(tmp_path / "train.pt")
    Features(torch.randn(4, 8), torch.arange(4) % 2, classes=["cat", "dog"]).save(tmp_path / "val.npz")
    for name, rows in (("train.pt", 10), ("val.npz", 4)):
        assert main(["info", str(tmp_path / name)]) == 0
        out = capsys.readouterr().out
        assert "features from dinokit extract" in out and f": {rows} rows x 8, 2 classes (cat, dog)" in out
    # A --dump_features folder: dinokit's train.pt/val.pt, or the release's four files.
    Features(torch.randn(4, 8), torch.arange(4) % 2, classes=["cat", "dog"]).save(tmp_path / "val.pt")
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "from dinokit knn --dump_features" in out and "val.pt       : 4 rows x 8, 2 classes (cat, dog)" in out
    release = tmp_path / "release_dump"
    release.mkdir()
    for split, n in (("train", 6), ("test", 3)):
        torch.save(torch.randn(n, 8), release / f"{split}feat.pth")
        torch.save(torch.arange(n) % 3, release / f"{split}labels.pth")
    assert main(["info", str(release)]) == 0
    out = capsys.readouterr().out
    assert "layout of the release's eval_knn.py" in out and "trainfeat.pth: 6 rows x 8, 3 distinct labels" in out
    torch.save({"state_dict": LinearClassifier(8, 3).state_dict(), "top1": 61.5, "classes": ["a", "b", "c"]},
               tmp_path / "probe.pth")
    assert main(["info", str(tmp_path / "probe.pth")]) == 0
    out = capsys.readouterr().out
    assert "8-d features to 3 classes" in out and "val top-1    : 61.50" in out and "classes      : a, b, c" in out
    assert main(["knn", "--load_features", str(tmp_path / "train.pt")]) == 2
    assert "give the two files (train, val)" in capsys.readouterr().err


def test_a_run_on_small_images_is_evaluated_at_its_training_size(capsys, cifar_small, tmp_path, caplog):
    train_dir, test_dir = cifar_small
    teacher = {f"backbone.{k}": v for k, v in vit_tiny(patch_size=8, img_size=32).state_dict().items()}
    torch.save({"teacher": teacher, "args": {"global_crops_size": 24, "canvas_size": 32}}, tmp_path / "run.pth")
    base = ["extract", "--data_path", test_dir, "--pretrained_weights", tmp_path / "run.pth", "--num_workers", "0",
            "--quiet", "--output"]
    with caplog.at_level("INFO"):
        assert run(capsys, *base, tmp_path / "a.pt")[0] == 0
    assert "images at 32 px, the size the checkpoint was trained at" in caplog.text
    assert run(capsys, *base, tmp_path / "b.pt", "--image_size", "32")[0] == 0
    torch.testing.assert_close(load_features(tmp_path / "a.pt").features, load_features(tmp_path / "b.pt").features)
    assert run(capsys, *base, tmp_path / "c.pt", "--resize", "40", "--crop", "40")[0] == 0  # flags win
    assert not torch.allclose(load_features(tmp_path / "a.pt").features, load_features(tmp_path / "c.pt").features)



def test_a_saved_probe_scores_a_val_folder_with_some_of_its_classes(capsys, weights, cifar_small, tmp_path):
    from dinokit.eval.linear import load_classifier

    train_dir, test_dir = cifar_small
    out = tmp_path / "probe"
    assert run(capsys, "linear", "--train_path", train_dir, "--val_path", test_dir, "--pretrained_weights", weights,
               "--n_last_blocks", "1", "--epochs", "30", "--lr", "0.1", "--output_dir", out, *COMMON)[0] == 0
    pets = tmp_path / "pets"  # a val folder of cat and dog only: its own labels are 0 and 1
    for cls in ("cat", "dog"):
        shutil.copytree(test_dir / cls, pets / cls)
    rc, info, _ = run(capsys, "linear", "--evaluate", "--pretrained_linear", out / "linear.pth", "--train_path",
                      train_dir, "--val_path", pets, "--pretrained_weights", weights, "--n_last_blocks", "1", *COMMON)
    assert rc == 0 and info["val"] == 20
    assert run(capsys, "extract", "--data_path", pets, "--output", tmp_path / "pets.pt", "--pretrained_weights",
               weights, *COMMON)[0] == 0
    feats = load_features(tmp_path / "pets.pt")
    truth = torch.tensor([3, 5])[feats.labels]  # cat and dog among the 10 CIFAR classes
    predicted = load_classifier(out / "linear.pth")(feats.features).argmax(dim=1)
    assert info["top1"] == pytest.approx(100.0 * (predicted == truth).float().mean().item())
    assert info["top1"] != pytest.approx(100.0 * (predicted == feats.labels).float().mean().item())  # telling


def test_knn_on_folders_without_classes_stops_before_extraction(capsys, tmp_path):
    for split in ("train", "val"):  # loose images: every label the same, so 100% would say nothing
        (tmp_path / split).mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / split / "a.png")
    rc, _, err = run(capsys, "knn", "--data_path", tmp_path, "--random_init", "--arch", "vit_tiny")
    assert rc == 2 and "needs class sub-folders (<dir>/<class>/*.jpg), at least 2" in err and "backbone" not in err


def test_load_features_finds_npz_files_in_a_folder(capsys, tmp_path):
    Features(torch.eye(4), torch.arange(4) % 2, classes=["a", "b"]).save(tmp_path / "train.npz")
    Features(torch.eye(4)[:2], torch.tensor([0, 1]), classes=["a", "b"]).save(tmp_path / "val.npz")
    rc, info, _ = run(capsys, "knn", "--load_features", tmp_path, "--nb_knn", "1")
    assert rc == 0 and info["train"] == 4 and info["results"]["1"]["top1"] == 100.0



def test_a_misspelt_command_gets_the_closest_one(capsys):
    assert main(["trian", "--data_path", "x"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian' (did you mean train?)" in err and "Traceback" not in err
    assert main(["--version"]) == 0 and "dinokit" in capsys.readouterr().out
