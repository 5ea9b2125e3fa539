"""Weights in both release formats load strictly; wrong or unsafe files get clear errors."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import dinokit
from dinokit.cli.main import main
from dinokit.models import (CheckpointError, DINOHead, MultiCropWrapper, backbone_state_dict, build_backbone,
                            infer_arch, load_pretrained, vit_small, vit_tiny)

REPO = Path(__file__).resolve().parents[1]


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def full_checkpoint(student, teacher) -> dict:
    """The layout of the release's *_full_checkpoint.pth: DDP student, plain teacher, argparse args."""
    return {"student": {f"module.{k}": v for k, v in student.state_dict().items()},
            "teacher": teacher.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
            "args": Namespace(arch="vit_small", patch_size=8, out_dim=65536),
            "dino_loss": {"center": torch.zeros(1, 64)}}


def test_backbone_only_file_loads_with_inferred_arch(tmp_path):
    model = vit_small(patch_size=8)
    torch.save(model.state_dict(), tmp_path / "dino_deitsmall8_pretrain.pth")
    loaded = load_pretrained(tmp_path / "dino_deitsmall8_pretrain.pth")
    assert type(loaded).__name__ == "VisionTransformer" and loaded.patch_size == 8 and loaded.embed_dim == 384
    assert same_weights(model, loaded) and not loaded.training


def test_full_checkpoint_teacher_and_student(tmp_path):
    student = MultiCropWrapper(vit_tiny(patch_size=4, img_size=32), DINOHead(192, 64))
    teacher = MultiCropWrapper(vit_tiny(patch_size=4, img_size=32), DINOHead(192, 64))
    torch.save(full_checkpoint(student, teacher), tmp_path / "full.pth")
    t = load_pretrained(tmp_path / "full.pth")
    s = load_pretrained(tmp_path / "full.pth", checkpoint_key="student")
    assert same_weights(t, teacher.backbone) and same_weights(s, student.backbone)
    assert t.pos_embed.shape == (1, 65, 192)  # image size read off the pos_embed
    # The release's args name no crop size, but a position embedding built for 32 px tells it (the
    # release's own models are built for 224 px, which keeps them at 256 -> 224).
    assert t.pretrained_cfg["image_size"] == 32
    torch.save(vit_tiny(patch_size=16).state_dict(), tmp_path / "224.pth")
    assert load_pretrained(tmp_path / "224.pth").pretrained_cfg["image_size"] is None


@pytest.mark.parametrize("args, size", [({"global_crops_size": 24, "canvas_size": 32}, 32),
                                        ({"global_crops_size": 32, "canvas_size": None}, 32),
                                        ({"global_crops_size": 224, "canvas_size": None}, None),
                                        (Namespace(global_crops_size=32), 32), (None, None)])
def test_training_image_size_is_read_off_the_checkpoint_args(tmp_path, args, size):
    # Built for 224 px, so the size can only come from the args (a 32 px embedding would tell 32 itself).
    teacher = MultiCropWrapper(vit_tiny(patch_size=16), DINOHead(192, 64))
    torch.save({"teacher": teacher.state_dict(), "args": args}, tmp_path / "run.pth")
    assert load_pretrained(tmp_path / "run.pth").pretrained_cfg["image_size"] == size


def test_head_loads_official_weight_norm_keys(tmp_path):
    student = MultiCropWrapper(vit_tiny(patch_size=16, img_size=32), DINOHead(192, 64))
    head_sd = {k[len("head."):]: v for k, v in student.state_dict().items() if k.startswith("head.")}
    assert {"last_layer.weight_g", "last_layer.weight_v"} <= head_sd.keys()
    fresh = DINOHead(192, 64)
    fresh.load_state_dict(head_sd, strict=True)
    x = torch.randn(2, 192)
    torch.testing.assert_close(fresh(x), student.head(x))


@pytest.mark.parametrize("arch", ["resnet50", "resnet18", "resnet34", "resnet18_cifar"])
def test_safetensors_and_resnets(tmp_path, arch):
    model = build_backbone(arch)
    save_file(model.state_dict(), str(tmp_path / "r.safetensors"))
    loaded = load_pretrained(tmp_path / "r.safetensors")  # the depth and stem are read off the tensors
    assert type(loaded).__name__ == "ResNet" and same_weights(model, loaded)
    assert infer_arch(backbone_state_dict(model.state_dict()))[0] == arch


def transformers_layout(model, prefix: str = "") -> dict:
    """``model``'s weights as Hugging Face's ViT conversion of the DINO release stores them
    (transformers/models/vit/convert_dino_to_pytorch.py): split q/k/v, layernorm_before ..."""
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    sd, out, width = model.state_dict(), {}, model.embed_dim
    for k, v in sd.items():
        if m := re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", k):
            block, name, kind = m.groups()
            if name == "attn.qkv":
                for i, part in enumerate(("query", "key", "value")):
                    out[f"encoder.layer.{block}.attention.attention.{part}.{kind}"] = v[i * width:(i + 1) * width]
            else:
                out[f"encoder.layer.{block}.{names[name]}.{kind}"] = v
    out.update({"embeddings.cls_token": sd["cls_token"], "embeddings.position_embeddings": sd["pos_embed"],
                "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
                "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
                "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"],
                "pooler.dense.weight": torch.zeros(width, width), "pooler.dense.bias": torch.zeros(width)})
    return {prefix + k: v.contiguous() for k, v in out.items()}


def test_hugging_face_transformers_weights_load_into_the_release_layout(tmp_path, capsys):
    model = vit_small(patch_size=8).eval()
    folder = tmp_path / "dino-vits8"  # a model folder as huggingface_hub downloads it
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "vit", "patch_size": 8, "hidden_size": 384}')
    save_file(transformers_layout(model), str(folder / "model.safetensors"))
    loaded = load_pretrained(folder)
    assert same_weights(model, loaded) and loaded.patch_size == 8
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))
    assert main(["info", str(folder)]) == 0
    assert "Hugging Face transformers ViT" in capsys.readouterr().out
    # ViTForImageClassification's vit.-prefixed keys, in a pytorch_model.bin
    torch.save(transformers_layout(model, "vit."), tmp_path / "pytorch_model.bin")
    assert same_weights(model, load_pretrained(tmp_path / "pytorch_model.bin"))
    broken = transformers_layout(model)
    del broken["encoder.layer.3.attention.attention.key.weight"]
    torch.save(broken, tmp_path / "broken.bin")
    with pytest.raises(CheckpointError, match="encoder.layer.3.attention.attention.query.weight"):
        load_pretrained(tmp_path / "broken.bin")
    with pytest.raises(CheckpointError, match="a Hugging Face model id\\? download it"):  # offline: say what to do
        load_pretrained("facebook/dino-vits8")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(CheckpointError, match="folder without model.safetensors or pytorch_model.bin"):
        load_pretrained(tmp_path / "empty_folder")


def test_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    sd = vit_tiny(patch_size=16).state_dict()
    del sd["norm.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path / "bad.pth")
    assert "missing keys: norm.weight" in str(err.value) and "unexpected keys: extra.weight" in str(err.value)
    torch.save(vit_tiny(patch_size=16).state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match="(?s)shape mismatch.*its tensors look like vit_tiny/16: leave out"):
        load_pretrained(tmp_path / "tiny.pth", arch="vit_small")
    with pytest.raises(CheckpointError, match="look like vit_tiny/16"):
        load_pretrained(tmp_path / "tiny.pth", patch_size=8)
    assert "check --arch" in str(err.value)  # the file's own arch: no hint to give


def _truncated_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1000)}, buf)
    return buf.getvalue()[:300]


@pytest.mark.parametrize("content,match", [
    (b"", "not a file saved by torch.save"),
    (b"hello, not a checkpoint", r"not a file saved by torch.save .* starts with b'hell'"),
    (b"\x80\x02garbage bytes", "not a readable torch.save file: Unsupported operand"),
    (_truncated_checkpoint(), "not a readable torch.save file .*zip archive"),
])
def test_wrong_file_gets_clear_error(tmp_path, content, match):
    (tmp_path / "x.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_pretrained(tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="neither a file nor one of the release names"):
        load_pretrained(tmp_path / "missing.pth")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    _Evil.marker = tmp_path / "pwned"
    torch.save({"model": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"refused to load .*Details: .*GLOBAL \S*system"):
        load_pretrained(tmp_path / "evil.pth")
    assert not _Evil.marker.exists()


def test_release_name_uses_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    model = vit_small(patch_size=16)
    torch.save(model.state_dict(), tmp_path / "checkpoints" / "dino_deitsmall16_pretrain.pth")
    assert same_weights(model, load_pretrained("dino_vits16"))


def test_release_style_load_pretrained_weights_into_an_existing_model(tmp_path, monkeypatch):
    from dinokit.models import load_pretrained_weights

    torch.manual_seed(0)
    student = MultiCropWrapper(vit_small(patch_size=16), DINOHead(384, 64))
    teacher = MultiCropWrapper(vit_small(patch_size=16), DINOHead(384, 64))
    torch.save({"student": {f"module.{k}": v for k, v in student.state_dict().items()},
                "teacher": teacher.state_dict(), "epoch": 3}, tmp_path / "full.pth")
    # The release's call: (model, args.pretrained_weights, args.checkpoint_key, args.arch, args.patch_size)
    model = load_pretrained_weights(vit_small(patch_size=16), str(tmp_path / "full.pth"), "student",
                                    "vit_small", 16)
    assert same_weights(model, student.backbone)
    # No file: the release weights of the architecture, from the hub cache (as the release does).
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    release = vit_small(patch_size=16)
    torch.save(release.state_dict(), tmp_path / "checkpoints" / "dino_deitsmall16_pretrain.pth")
    assert same_weights(load_pretrained_weights(vit_small(patch_size=16), "", "teacher", "vit_small", 16), release)
    with pytest.raises(CheckpointError, match="no DINO release for vit_tiny with patch size 16"):
        load_pretrained_weights(vit_tiny(patch_size=16), "", "teacher", "vit_tiny", 16)
    with pytest.raises(CheckpointError, match="shape mismatch"):  # strict, unlike the release
        load_pretrained_weights(vit_tiny(patch_size=16), str(tmp_path / "full.pth"), "teacher", "vit_tiny", 16)


def test_release_name_offline_without_cache_is_actionable(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*a, **k):
        raise OSError("network unreachable")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError, match="pass its local path"):
        load_pretrained("dino_vitb8")


def test_torch_hub_local_entry_points(tmp_path):
    model = torch.hub.load(str(REPO), "dino_vits8", source="local", pretrained=False)
    assert model.patch_size == 8 and model.embed_dim == 384
    torch.save(model.state_dict(), tmp_path / "w.pth")
    again = torch.hub.load(str(REPO), "dino_vits8", source="local", pretrained=str(tmp_path / "w.pth"))
    assert same_weights(model, again)


def test_cli_help_and_info(tmp_path):
    torch.save(vit_tiny(patch_size=16).state_dict(), tmp_path / "w.pth")
    out = subprocess.run([sys.executable, "-m", "dinokit", "info", str(tmp_path / "w.pth")],
                         capture_output=True, text=True, check=True).stdout
    assert "vit_tiny/16, 192-d features" in out and "5.5" in out and "trained" not in out
    # A full checkpoint of the release: its Namespace of flags says how it was trained.
    flags = Namespace(arch="vit_tiny", patch_size=16, data_path="/data/imagenet/train", epochs=100)
    sd = {f"module.backbone.{k}": v for k, v in vit_tiny(patch_size=16).state_dict().items()}
    torch.save({"teacher": sd, "student": sd, "epoch": 3, "args": flags}, tmp_path / "full.pth")
    out = subprocess.run([sys.executable, "-m", "dinokit", "info", str(tmp_path / "full.pth")],
                         capture_output=True, text=True, check=True).stdout
    assert "epoch        : 3" in out and "trained      : on /data/imagenet/train, 100 epochs" in out
    bad = subprocess.run([sys.executable, "-m", "dinokit", "info", str(tmp_path / "nope.pth")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "nope.pth" in bad.stderr
    assert hasattr(dinokit, "load_pretrained")


def test_feature_files_and_linear_probes_are_named_as_such(tmp_path):
    torch.save({"features": torch.randn(4, 8), "labels": torch.zeros(4, dtype=torch.long)}, tmp_path / "f.pt")
    torch.save({"state_dict": {"linear.weight": torch.zeros(3, 8), "linear.bias": torch.zeros(3)}}, tmp_path / "l.pth")
    with pytest.raises(CheckpointError, match="is a feature file \\(dinokit extract\\), not backbone weights"):
        load_pretrained(tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match="is a linear probe"):
        load_pretrained(tmp_path / "l.pth")

