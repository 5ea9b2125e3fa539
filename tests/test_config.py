"""Flags and config files become one typed config; bad values get one clear message."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from dinokit.cli.main import build_parser, main
from dinokit.train import train
from dinokit.cli.train import config_from_args
from dinokit.errors import ConfigError
from dinokit.models.pretrained import training_image_size
from dinokit.train.config import PRESETS, TrainConfig, load_config, parse_duration

OFFICIAL_FLAGS = ("arch patch_size out_dim norm_last_layer momentum_teacher use_bn_in_head warmup_teacher_temp "
                  "teacher_temp warmup_teacher_temp_epochs use_fp16 weight_decay weight_decay_end clip_grad "
                  "batch_size_per_gpu epochs freeze_last_layer lr warmup_epochs min_lr optimizer drop_path_rate "
                  "global_crops_scale local_crops_number local_crops_scale data_path output_dir saveckp_freq "
                  "seed num_workers").split()


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_official_defaults():
    cfg = parse()
    assert (cfg.arch, cfg.patch_size, cfg.out_dim, cfg.momentum_teacher, cfg.teacher_temp) == \
        ("vit_small", 16, 65536, 0.996, 0.04)
    assert (cfg.lr, cfg.min_lr, cfg.weight_decay, cfg.weight_decay_end, cfg.clip_grad) == \
        (0.0005, 1e-6, 0.04, 0.4, 3.0)
    assert cfg.global_crops_scale == (0.4, 1.0) and cfg.local_crops_scale == (0.05, 0.4)
    assert (cfg.local_crops_number, cfg.epochs, cfg.warmup_epochs, cfg.batch_size_per_gpu) == (8, 100, 10, 64)
    assert (cfg.global_crops_size, cfg.local_crops_size) == (224, 96)
    assert all(hasattr(cfg, f) for f in OFFICIAL_FLAGS)


def test_train_config_built_in_code_converts_or_refuses_its_values():
    from dinokit.train import TrainConfig

    cfg = TrainConfig(global_crops_scale=[0.3, 1], lr="1e-3", norm_last_layer="false", epochs=20.0)
    assert (cfg.global_crops_scale, cfg.lr, cfg.norm_last_layer, cfg.epochs) == ((0.3, 1.0), 0.001, False, 20)
    assert type(cfg.epochs) is int
    with pytest.raises(ConfigError, match="lr: 'abc' is not a valid float"):
        TrainConfig(lr="abc")
    with pytest.raises(ConfigError, match="epochs: 2.5 is not a valid int"):
        TrainConfig(epochs=2.5)
    assert TrainConfig(p_blur="0, 0.5, 1").p_blur == (0.0, 0.5, 1.0)  # a triple, as YAML or --set give it
    with pytest.raises(ConfigError, match=r"p_blur: \[0, 0\] is not a valid list of 3 numbers"):
        TrainConfig(p_blur=[0, 0])


def test_the_release_old_deit_names_mean_vits():
    from dinokit.cli.argtypes import arch_flag
    from dinokit.train import TrainConfig

    assert parse("--arch", "deit_small").arch == "vit_small"  # main_dino.py maps them the same way
    assert TrainConfig(arch="deit_tiny").arch == "vit_tiny" and arch_flag("resnet50") == "resnet50"
    args = build_parser().parse_args(["knn", "--arch", "deit_base", "--random_init"])
    assert args.arch == "vit_base"


def test_train_help_shows_each_default_once():
    train_parser = build_parser().commands["train"]
    text = " ".join(train_parser.format_help().split())
    assert "--teacher_temp TEACHER_TEMP teacher temperature after warm-up (default: 0.04) --warmup" in text
    assert "default: None" not in text
    assert "--centering CENTERING teacher centering" in text
    # Every flag says what it does, under the release's sections; the presets are listed with theirs.
    for action in train_parser._actions:
        assert not action.help.startswith(" (default"), action.dest
    for title in ("model:", "temperature and centering:", "optimisation:", "multi-crop and augmentation:"):
        assert title in text
    assert "cifar_resnet the demo's recipe on resnet18_cifar" in text and "(default: )" not in text
    assert "cifar_resnet16 cifar_resnet with 16 px crops" in text


def test_the_preset_for_cpus_without_amx_changes_only_crops_and_momentum():
    fast, base = parse("--preset", "cifar_resnet16").to_dict(), parse("--preset", "cifar_resnet").to_dict()
    changed = {k for k, v in fast.items() if base[k] != v}
    assert changed == {"preset", "global_crops_size", "momentum_teacher", "momentum_teacher_end"}
    assert [fast[k] for k in ("global_crops_size", "momentum_teacher", "momentum_teacher_end")] == [16, 0.98, 0.98]


def test_flags_preset_and_yaml_precedence(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 0.002\nlocal_crops_number: 2\nnorm_last_layer: false\n")
    cfg = parse("--preset", "cifar", "--config", str(tmp_path / "c.yaml"), "--local_crops_number", "4",
                "--global_crops_scale", "0.3", "1.0", "--use_fp16", "False")
    assert cfg.arch == PRESETS["cifar"]["arch"] and cfg.patch_size == 4  # preset
    assert cfg.lr == 0.002 and cfg.norm_last_layer is False              # yaml over preset
    assert cfg.local_crops_number == 4                                   # flag over yaml
    assert cfg.global_crops_scale == (0.3, 1.0) and cfg.use_fp16 is False
    assert parse("--p_blur", "0", "0", "0.5").p_blur == (0.0, 0.0, 0.5) and cfg.p_blur == (1.0, 0.1, 0.5)


def test_a_preset_named_in_the_yaml_file_is_applied(tmp_path):
    (tmp_path / "c.yaml").write_text("preset: demo\nlr: 0.002\n")
    cfg = parse("--config", str(tmp_path / "c.yaml"))
    assert (cfg.preset, cfg.arch, cfg.patch_size, cfg.out_dim) == ("demo", "vit_tiny", 8, 1024) and cfg.lr == 0.002
    both = parse("--config", str(tmp_path / "c.yaml"), "--preset", "cifar")  # the command line wins
    assert (both.preset, both.patch_size, both.lr) == ("cifar", 4, 0.002)


@pytest.mark.parametrize("values,match", [
    ({"global_crops_size": 30, "patch_size": 4}, "not a multiple of --patch_size"),
    ({"optimizer": "adam"}, "--optimizer"),
    ({"out_dim": 1}, "--out_dim 1 makes the loss 0"),
    ({"arch": "vit_huge"}, "--arch"),
    ({"local_crops_scale": (0.5, 0.2)}, "local_crops_scale"),
    ({"time_budget": "soon"}, "time_budget"),
    ({"centering": "mean"}, "--centering"),
    ({"koleo_loss_weight": -0.1}, "--koleo_loss_weight"),
    ({"global_crops_size_start": 20, "patch_size": 8, "global_crops_size": 32}, "start 20 is not a multiple"),
    ({"epochs": 2, "warmup_epochs": 10}, "--warmup_epochs 10 exceeds --epochs 2"),
    ({"epochs": 5, "warmup_teacher_temp_epochs": 30}, "--warmup_teacher_temp_epochs 30 exceeds"),
    ({"lr": -0.001}, "--lr cannot be negative"),
    ({"num_workers": -1}, "--num_workers cannot be negative"),
    ({"clip_grad": -3}, "--clip_grad cannot be negative"),
    ({"teacher_temp": 0}, "--teacher_temp must be positive"),
    ({"drop_path_rate": 1.0}, r"--drop_path_rate must be in \[0, 1\)"),
    ({"log_every": 0}, "--log_every must be positive"),
    ({"patch_size": 0}, "--patch_size must be positive"),
    ({"center_momentum": 1.5}, "--center_momentum"),
    ({"p_blur": (1.0, 0.1, 1.5)}, r"--p_blur 1.0 0.1 1.5: a probability must lie in \[0, 1\]"),
    ({"knn_every": 1}, "--knn_every 1 needs --knn_train_path and --knn_val_path"),
])
def test_inconsistent_values(values, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        load_config(values)
    # The same checks for a TrainConfig built in Python and handed to train(), before anything is written.
    with pytest.raises(ConfigError, match=match):
        train(TrainConfig(**{**values, "data_path": str(tmp_path), "output_dir": str(tmp_path / "out")}))
    assert not (tmp_path / "out").exists()


def test_unknown_and_mistyped_yaml_keys(tmp_path):
    (tmp_path / "a.yaml").write_text("lerning_rate: 0.1\nbatch-size-per-gpu: 8\n")
    with pytest.raises(ConfigError, match=r"unknown configuration key\(s\): batch-size-per-gpu \(did you mean "
                                          r"batch_size_per_gpu\?\), lerning_rate$"):
        load_config(config_file=str(tmp_path / "a.yaml"))
    (tmp_path / "b.yaml").write_text("epochs: ten\n")
    with pytest.raises(ConfigError, match="epochs: 'ten' is not a valid int"):
        load_config(config_file=str(tmp_path / "b.yaml"))
    (tmp_path / "c.yaml").write_text("global_crops_scale: 0.4\n")
    with pytest.raises(ConfigError, match=r"global_crops_scale: 0.4 is not a valid pair of numbers \(min, max\)"):
        load_config(config_file=str(tmp_path / "c.yaml"))
    (tmp_path / "d.yaml").write_text("arch:\n")
    with pytest.raises(ConfigError, match="arch: None is not a valid str"):
        load_config(config_file=str(tmp_path / "d.yaml"))
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="imagenet22k")


@pytest.mark.parametrize("text,match", [
    ("lr: [1, 2\n", r"not valid YAML: line 2, column 1: expected ',' or '\]'"),
    ("lr: 0.1\n\tepochs: 2\n", r"not valid YAML: line 2, column 1: found character '\\t'"),
    ("- 1\n- 2\n", "must hold a mapping"),
])
def test_broken_yaml_is_one_line_with_its_position(tmp_path, text, match):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(config_file=str(tmp_path / "c.yaml"))
    assert "\n" not in str(info.value)


def test_durations():
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration("45s") == 45
    assert parse_duration("2") == 120
    with pytest.raises(ConfigError):
        parse_duration("30 minutes")
    for zero in ("0", "0m", "0h0s"):  # a bare zero once slipped past the check and crashed the trainer
        with pytest.raises(ConfigError, match="positive"):
            parse_duration(zero)


@pytest.mark.parametrize("off", ["0", "0m", "0.0s", "off", "none", ""])
def test_a_zero_time_budget_switches_a_presets_budget_off(off):
    cfg = load_config({"data_path": "d", "output_dir": "o", "time_budget": off, "epochs": 20}, preset="demo")
    assert cfg.time_budget == "" and cfg.epochs == 20
    half_minute = load_config({"data_path": "d", "output_dir": "o", "time_budget": "0.5m"}, preset="demo")
    assert half_minute.time_budget == "0.5m"


@pytest.mark.parametrize("preset", ["demo", "cifar_resnet", "cifar_resnet16", "cifar"])
def test_online_and_demo_knn_evaluate_where_dinokit_knn_does(preset):
    cfg = load_config({"data_path": "d", "output_dir": "o"}, preset=preset)
    assert cfg.knn_image_size == 32  # the CIFAR canvas, also where 24 px crops were taken from
    assert training_image_size({"args": cfg.to_dict()}) == cfg.knn_image_size  # `dinokit knn`'s default


@pytest.mark.parametrize("crops, canvas, size", [(96, 0, 96), (224, 0, 224), (224, 256, 224), (32, 48, 48)])
def test_knn_image_size_is_a_small_canvas_else_the_global_crops(crops, canvas, size):
    cfg = load_config({"data_path": "d", "output_dir": "o", "global_crops_size": crops, "canvas_size": canvas})
    assert cfg.knn_image_size == size


def test_cli_reports_bad_flag_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dinokit", "train", "--data_path", str(tmp_path), "--arch", "vit_tiny",
                        "--patch_size", "7"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not a multiple of --patch_size 7" in r.stderr
    r = subprocess.run([sys.executable, "-m", "dinokit", "train", "--epochs", "many"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid int value" in r.stderr
    (tmp_path / "a_file").write_text("")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "x.png")
    for out, message in (("a_file", "is a file, not a folder"), ("a_file/run", "cannot write into --output_dir")):
        r = subprocess.run([sys.executable, "-m", "dinokit", "train", "--preset", "demo", "--data_path",
                            str(tmp_path / "images"), "--output_dir", str(tmp_path / out)], capture_output=True,
                           text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_misspelt_flags_name_the_command_and_the_closest_flag(capsys):
    assert main(["retrieve", "--query_dir", "q", "--gallery", "g"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == ("dinokit retrieve: error: unrecognized arguments: --query_dir q "
                   "(did you mean --query for --query_dir?)")
    assert main(["train", "--teacher_temperature=0.07"]) == 2
    assert "(did you mean --teacher_temp for --teacher_temperature?)" in capsys.readouterr().err
    # The release's launcher, python -m torch.distributed.launch, passes --local-rank=N.
    assert parse("--local-rank=1").local_rank == 1 and parse("--local_rank", "2").local_rank == 2
    # It puts the flag first, before the command: the command still gets it (then stops at the data).
    assert main(["--local-rank=0", "train", "--data_path", "/nonexistent/images"]) == 2
    assert "data folder '/nonexistent/images' does not exist" in capsys.readouterr().err
    # The release's evaluation scripts run under the same launcher: their flags parse too.
    assert main(["--local-rank=0", "knn", "--dist_url", "env://", "--data_path", "/nonexistent/data"]) == 2
    assert "/nonexistent/data needs train/ and val/" in capsys.readouterr().err


def test_config_round_trip():
    cfg = TrainConfig()
    assert load_config(cfg.to_dict()) == cfg
