"""Loading DINO weights: the official release files, full training checkpoints, and our own.

Every file is read with ``torch.load(weights_only=True)`` (or safetensors): a checkpoint can hold
tensors and plain containers, never code.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import DinokitError
from ..safe_load import load_tensors
from .resnet import resnet18, resnet18_cifar, resnet34, resnet50
from .transformers_layout import from_transformers_vit, is_transformers_vit
from .vision_transformer import vit_base, vit_small, vit_tiny

__all__ = ["PRETRAINED_URLS", "LINEAR_URLS", "cached_download", "load_pretrained", "load_pretrained_weights",
           "load_checkpoint_file", "backbone_state_dict", "build_backbone", "infer_arch", "arch_name", "release_name",
           "CheckpointError"]

log = logging.getLogger(__name__)

_BASE = "https://dl.fbaipublicfiles.com/dino"
PRETRAINED_URLS = {
    "dino_vits16": f"{_BASE}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    "dino_vits8": f"{_BASE}/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
    "dino_vitb16": f"{_BASE}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    "dino_vitb8": f"{_BASE}/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
    "dino_resnet50": f"{_BASE}/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
}
# The release's linear classifiers on ImageNet, trained on each backbone's frozen features.
LINEAR_URLS = {name: url.replace("_pretrain.pth", "_linearweights.pth") for name, url in PRETRAINED_URLS.items()}
_RELEASE_ARCH = {"dino_vits16": ("vit_small", 16), "dino_vits8": ("vit_small", 8),
                 "dino_vitb16": ("vit_base", 16), "dino_vitb8": ("vit_base", 8),
                 "dino_resnet50": ("resnet50", None)}


def release_name(arch: str | None, patch_size: int | None) -> str | None:
    """The DINO release for an architecture and patch size (the release's defaults: vit_small, 16)."""
    arch = arch or "vit_small"
    wanted = (arch, None if arch.startswith("resnet") else patch_size or 16)
    return next((name for name, built in _RELEASE_ARCH.items() if built == wanted), None)


_VIT_BY_WIDTH = {192: "vit_tiny", 384: "vit_small", 768: "vit_base"}
ARCHS = {"vit_tiny": vit_tiny, "vit_small": vit_small, "vit_base": vit_base, "resnet18": resnet18,
         "resnet34": resnet34, "resnet50": resnet50, "resnet18_cifar": resnet18_cifar}


class CheckpointError(DinokitError, RuntimeError):
    """A weights file that cannot be read or does not fit the requested network."""


def build_backbone(arch: str, patch_size: int = 16, **kwargs) -> nn.Module:
    """Backbone by name: ``vit_tiny``, ``vit_small``, ``vit_base`` (any patch size; ``kwargs`` go to
    the ViT) or ``resnet18``, ``resnet34``, ``resnet50``, ``resnet18_cifar`` (``patch_size`` and
    ``kwargs`` ignored)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if arch.startswith("resnet"):
        return ARCHS[arch]()
    return ARCHS[arch](patch_size=patch_size, **kwargs)


def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """Read a ``.pth`` / ``.safetensors`` file as a dict of tensors and plain values, safely. A
    Hugging Face model folder stands for its ``model.safetensors`` or ``pytorch_model.bin``."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not found:
            raise CheckpointError(f"{str(path)!r} is a folder without model.safetensors or pytorch_model.bin: "
                                  f"pass a weights file")
        path = found[0]
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises several types for a bad header
            raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from None
    # Official full checkpoints keep their argparse.Namespace of flags: allow that type only.
    obj = load_tensors(path, CheckpointError, allowed_globals=[argparse.Namespace])
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def backbone_state_dict(ckpt: dict, checkpoint_key: str = "teacher") -> dict[str, torch.Tensor]:
    """The backbone weights of any supported checkpoint layout.

    Accepts a bare backbone state dict, a full training checkpoint (``student`` / ``teacher``
    entries holding ``backbone.*`` and ``head.*``), a ``model`` / ``state_dict`` wrapper, or the
    ViT layout of Hugging Face ``transformers`` (renamed); strips ``module.`` (DDP) and
    ``backbone.`` prefixes and drops head weights.
    """
    sd = ckpt
    if checkpoint_key in ckpt and isinstance(ckpt[checkpoint_key], dict):
        sd = ckpt[checkpoint_key]
    else:
        for key in ("state_dict", "model"):
            if key in ckpt and isinstance(ckpt[key], dict):
                sd = ckpt[key]
                break
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = k.removeprefix("module.").removeprefix("_orig_mod.")
        if k.startswith("head.") or k.startswith("fc."):
            continue
        out[k.removeprefix("backbone.")] = v
    return from_transformers_vit(out) if is_transformers_vit(out) else out


def arch_name(arch: str, patch_size: int | None) -> str:
    """``vit_small/16`` for a ViT, the name alone for a ResNet: how logs and errors name a backbone."""
    return f"{arch}/{patch_size}" if arch.startswith("vit") and patch_size else arch


def infer_arch(sd: dict[str, torch.Tensor]) -> tuple[str, int | None, int]:
    """``(arch, patch_size, img_size)`` read off a backbone state dict's tensor shapes."""
    if "layer4.0.conv1.weight" in sd:
        return _infer_resnet(sd)
    if "patch_embed.proj.weight" not in sd or "pos_embed" not in sd:
        raise CheckpointError("cannot recognise the architecture: no ViT patch embedding or ResNet "
                              f"layers among the keys (first keys: {list(sd)[:5]})")
    width, _, patch, _ = sd["patch_embed.proj.weight"].shape
    if width not in _VIT_BY_WIDTH:
        raise CheckpointError(f"ViT width {width} is none of {sorted(_VIT_BY_WIDTH)} (tiny/small/base)")
    grid = math.isqrt(sd["pos_embed"].shape[1] - 1)
    return _VIT_BY_WIDTH[width], patch, grid * patch


def _infer_resnet(sd: dict[str, torch.Tensor]) -> tuple[str, None, int]:
    if "layer4.0.conv3.weight" in sd:
        return "resnet50", None, 224
    if sd["conv1.weight"].shape[-1] == 3:  # 3x3 stem: the 32 px variant
        return "resnet18_cifar", None, 32
    return ("resnet34" if "layer3.5.conv1.weight" in sd else "resnet18"), None, 224


def _resolve(name_or_path: str | os.PathLike) -> Path:
    """A local path as is; a release name through the torch hub cache, downloading if absent."""
    if str(name_or_path) not in PRETRAINED_URLS:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            hub = (" (a Hugging Face model id? download it, e.g. `huggingface-cli download "
                   f"{name_or_path} --local-dir DIR`, and pass DIR)"
                   if _looks_like_hub_id(str(name_or_path)) else "")
            raise CheckpointError(f"{str(name_or_path)!r} is neither a file nor one of the release names "
                                  f"{', '.join(PRETRAINED_URLS)}{hub}")
        return path
    return cached_download(PRETRAINED_URLS[str(name_or_path)])


def cached_download(url: str) -> Path:
    """The release file at ``url`` in the torch hub cache, downloaded there if absent."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(cached), progress=True)
        except Exception as e:
            raise CheckpointError(
                f"could not download {url} ({type(e).__name__}: {e}). Without network access, fetch the "
                f"file elsewhere and pass its local path, or place it at {cached}") from None
    return cached


def _looks_like_hub_id(name: str) -> bool:
    """``org/model`` that is no local path: no weights suffix, and no folder ``org`` here."""
    return bool(re.fullmatch(r"[\w-]+/[\w.-]+", name)) and Path(name).suffix not in (
        ".pth", ".pt", ".safetensors", ".bin", ".npz") and not Path(name.split("/")[0]).exists()


def load_pretrained(name_or_path: str | os.PathLike, arch: str | None = None, patch_size: int | None = None,
                    checkpoint_key: str = "teacher", **model_kwargs) -> nn.Module:
    """Build a backbone and load DINO weights into it, strictly.

    ``name_or_path`` is a release name (``dino_vits16``, ``dino_vits8``, ``dino_vitb16``,
    ``dino_vitb8``, ``dino_resnet50``) or a local ``.pth`` / ``.safetensors`` file: a backbone-only
    file or a full training checkpoint, whose ``checkpoint_key`` entry (``teacher`` by default) is
    used. ``arch`` and ``patch_size`` are inferred from the tensors when not given. Returns the
    backbone in eval mode.
    """
    path = _resolve(name_or_path)
    ckpt = load_checkpoint_file(path)
    sd = backbone_state_dict(ckpt, checkpoint_key)
    if not sd:
        raise CheckpointError(f"{path} contains no tensors under {checkpoint_key!r} or at its top level")
    if "features" in sd or "linear.weight" in sd:  # dinokit's other outputs, easy to pass by mistake
        what = "a feature file (dinokit extract)" if "features" in sd else "a linear probe (dinokit linear)"
        raise CheckpointError(f"{path} is {what}, not backbone weights: pass the checkpoint.pth of a run "
                              f"or a release file")
    if arch is None and str(name_or_path) in _RELEASE_ARCH:
        arch, patch_size = _RELEASE_ARCH[str(name_or_path)]
    inferred_arch, inferred_patch, img_size = infer_arch(sd)
    arch = arch or inferred_arch
    patch_size = patch_size or inferred_patch or 16
    if arch.startswith("vit"):
        model_kwargs.setdefault("img_size", img_size)
    model = build_backbone(arch, patch_size, **model_kwargs)
    hint = None
    if (arch, patch_size) != (inferred_arch, inferred_patch or patch_size):
        hint = (f"its tensors look like {arch_name(inferred_arch, inferred_patch)}: leave out --arch / "
                f"--patch_size to build that")
    load_state_dict_strict(model, sd, source=str(path), hint=hint)
    # A backbone-only file of a small-image run (dinokit export) still tells its size by its tensors.
    small = img_size if img_size < 128 else None
    model.pretrained_cfg = {"source": str(path), "arch": arch_name(arch, patch_size),  # timm's attribute
                            "image_size": training_image_size(ckpt) or small}
    return model.eval()


def load_pretrained_weights(model: nn.Module, pretrained_weights: str | os.PathLike, checkpoint_key: str = "teacher",
                            model_name: str | None = None, patch_size: int | None = None) -> nn.Module:
    """Load DINO weights into an existing backbone, with the signature of the release's
    ``utils.load_pretrained_weights`` so that code written for it carries over.

    ``pretrained_weights``: a file (backbone-only or a training checkpoint, read under
    ``checkpoint_key``) or a release name; an empty or missing path loads the release weights of
    ``model_name`` / ``patch_size``, as the release does. Unlike the release (``strict=False``),
    weights that do not fit raise :class:`CheckpointError` listing what differs. Returns ``model``.
    """
    source = str(pretrained_weights or "")
    if not source or not (source in PRETRAINED_URLS or Path(source).expanduser().is_file()):
        release = release_name(model_name, patch_size)
        if release is None:
            raise CheckpointError(f"no weights file {source!r} and no DINO release for {model_name} with "
                                  f"patch size {patch_size}")
        log.info("%s: loading the DINO release %s instead", f"no file {source!r}" if source else
                 "no weights given", release)
        source = release
    sd = backbone_state_dict(load_checkpoint_file(_resolve(source)), checkpoint_key)
    load_state_dict_strict(model, sd, source=source)
    return model


def training_image_size(ckpt: dict) -> int | None:
    """The image size a dinokit run of small images trained at (its canvas, else its global crops),
    read off the checkpoint's ``args``; None for ImageNet-size runs, release files and official
    checkpoints, which are evaluated at the usual 256 -> 224."""
    args = ckpt.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    if not isinstance(args, dict):
        return None
    size = args.get("canvas_size") or args.get("global_crops_size")
    return int(size) if isinstance(size, int) and 0 < size < 128 else None


def load_state_dict_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint",
                           hint: str | None = None) -> None:
    """``model.load_state_dict(sd, strict=True)`` with an error that lists what does not fit (and
    ends with ``hint`` when the caller knows better than the generic advice)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{source} does not fit {type(model).__name__}"]
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        parts.append(hint or "check --arch / --patch_size, or the checkpoint_key (teacher / student)")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(sd, strict=True)
