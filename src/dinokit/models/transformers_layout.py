"""Hugging Face ``transformers`` ViT weights (``facebook/dino-vits16`` ...) in the release's key layout.

``transformers`` stores a DINO ViT as ``ViTModel``: ``embeddings.*``, ``encoder.layer.N.*`` with
separate query / key / value projections, ``layernorm.*`` (``vit.``-prefixed inside
``ViTForImageClassification``). The release keeps one ``qkv`` matrix per block, rows in the order
query, key, value.
"""

from __future__ import annotations

import re

import torch

__all__ = ["is_transformers_vit", "from_transformers_vit"]

_RENAMES = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"layernorm\.", "norm."),
]
_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")
_DROPPED = ("pooler.", "classifier.", "embeddings.mask_token")  # not part of the release's backbone


def is_transformers_vit(sd: dict[str, torch.Tensor]) -> bool:
    return any(k.removeprefix("vit.") == "embeddings.cls_token" for k in sd)


def from_transformers_vit(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's keys for a ``transformers`` ViT state dict; keys it does not know are kept
    as they are, so that a strict load names them."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        key = key.removeprefix("vit.")
        if key.startswith(_DROPPED):
            continue
        if m := _QKV.fullmatch(key):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        for pattern, replacement in _RENAMES:
            key, n = re.subn(f"^{pattern}", replacement, key)
            if n:
                break
        out[key] = value
    for (block, kind), parts in qkv.items():
        if len(parts) == 3:
            out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
        else:  # an incomplete triple: keep the pieces under their names for the load error
            out.update({f"encoder.layer.{block}.attention.attention.{p}.{kind}": v for p, v in parts.items()})
    return out
