"""Vision Transformer backbone with the module names and state-dict layout of the DINO release.

A checkpoint published with DINO (``dino_deitsmall16_pretrain.pth`` ...) loads into
``vit_small(patch_size=16)`` with ``strict=True``. Shapes below use ``B`` batch, ``N`` tokens
(1 class token + patches), ``D`` embedding width, ``h`` heads.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputShapeError

__all__ = ["VisionTransformer", "vit_tiny", "vit_small", "vit_base", "interpolate_pos_embed"]


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability ``drop_prob``."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention. ``forward`` returns ``(out [B, N, D], attn [B, h, N, N] or None)``."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if return_attention or _explicit_is_faster(x):
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = self.attn_drop(attn) @ v
        else:
            # Fused kernel: never materialises the N x N matrix.
            p = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
            attn = None
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
        return out, (attn if return_attention else None)


def _explicit_is_faster(x: torch.Tensor) -> bool:
    """On CPUs, two batched matmuls beat the fused SDPA kernel for the short sequences of DINO
    crops (measured 2-7x, forward and backward, up to 197 tokens); SDPA stays on GPUs and for
    long sequences, where the N x N matrix would not fit."""
    return x.device.type == "cpu" and x.shape[1] <= 1024


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop=0.0,
                 attn_drop=0.0, drop_path=0.0, act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        y, attn = self.attn(self.norm1(x), return_attention)
        if return_attention:
            return attn
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Image ``[B, C, H, W]`` to patch tokens ``[B, (H/p)*(W/p), D]``."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.proj.in_channels:
            raise InputShapeError(f"expected images [B, {self.proj.in_channels}, H, W], got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.patch_size:  # conv2d's own message names no image or fix
            raise InputShapeError(f"image of {x.shape[-1]}x{x.shape[-2]} px is smaller than the "
                                 f"{self.patch_size} px patch: feed larger images (or a smaller --patch_size)")
        return self.proj(x).flatten(2).transpose(1, 2)


def interpolate_pos_embed(pos_embed: torch.Tensor, h_patches: int, w_patches: int) -> torch.Tensor:
    """Resize a ``[1, 1 + n*n, D]`` position embedding to a ``h_patches x w_patches`` grid.

    Bicubic with the scale factor (not the output size) and a +0.1 offset on the target grid, as
    in the DINO release, so that interpolated numbers match its pretrained evaluations exactly.
    """
    n = pos_embed.shape[1] - 1
    side = math.sqrt(n)
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    grid = patch_pos.reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    h0, w0 = h_patches + 0.1, w_patches + 0.1
    grid = F.interpolate(grid, scale_factor=(h0 / side, w0 / side), mode="bicubic")
    if grid.shape[-2:] != (h_patches, w_patches):
        raise RuntimeError(f"position embedding resized to {tuple(grid.shape[-2:])}, "
                           f"expected {(h_patches, w_patches)}")
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((cls_pos, patch_pos), dim=1)


class VisionTransformer(nn.Module):
    """ViT as used by DINO: class token output, no classification head by default."""

    def __init__(self, img_size=(224,), patch_size=16, in_chans=3, num_classes=0, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.0, norm_layer=nn.LayerNorm, **kwargs):
        super().__init__()
        img_size = img_size[0] if isinstance(img_size, (list, tuple)) else img_size
        self.num_features = self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth grows with depth
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, rates[i],
                  norm_layer=norm_layer)
            for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def interpolate_pos_encoding(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Position embedding for tokens ``x [B, 1 + N, D]`` of an ``h x w`` pixel image."""
        if x.shape[1] - 1 == self.pos_embed.shape[1] - 1 and h == w:
            return self.pos_embed
        p = self.patch_size
        return interpolate_pos_embed(self.pos_embed, h // p, w // p)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``[B, 3, H, W]`` to tokens ``[B, 1 + (H/p)(W/p), D]`` with positions added."""
        h, w = x.shape[-2:]
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, h, w)
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All normalised tokens ``[B, N, D]`` (class token first)."""
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised class token ``[B, D]`` (or logits if built with ``num_classes > 0``)."""
        return self.head(self.forward_features(x)[:, 0])

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention of the last block ``[B, heads, N, N]``."""
        x = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        return self.blocks[-1](x, return_attention=True)

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Normalised token sequences ``[B, N, D]`` of the last ``n`` blocks, shallowest first."""
        x = self.prepare_tokens(x)
        out = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if len(self.blocks) - i <= n:
                out.append(self.norm(x))
        return out


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _vit(embed_dim, num_heads, patch_size, img_size, drop_path_rate, **kwargs) -> VisionTransformer:
    kwargs.setdefault("norm_layer", partial(nn.LayerNorm, eps=1e-6))
    kwargs.setdefault("depth", 12)
    return VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, num_heads=num_heads,
                             mlp_ratio=4, qkv_bias=True, drop_path_rate=drop_path_rate, **kwargs)


def vit_tiny(patch_size: int = 16, img_size=224, drop_path_rate: float = 0.0, **kwargs) -> VisionTransformer:
    """ViT-Ti: width 192, 12 blocks, 3 heads (5.5 M parameters)."""
    return _vit(192, 3, patch_size, img_size, drop_path_rate, **kwargs)


def vit_small(patch_size: int = 16, img_size=224, drop_path_rate: float = 0.0, **kwargs) -> VisionTransformer:
    """ViT-S (DeiT-S): width 384, 12 blocks, 6 heads (21 M parameters)."""
    return _vit(384, 6, patch_size, img_size, drop_path_rate, **kwargs)


def vit_base(patch_size: int = 16, img_size=224, drop_path_rate: float = 0.0, **kwargs) -> VisionTransformer:
    """ViT-B: width 768, 12 blocks, 12 heads (85 M parameters)."""
    return _vit(768, 12, patch_size, img_size, drop_path_rate, **kwargs)
