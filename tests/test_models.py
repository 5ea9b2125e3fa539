"""Backbones, head and wrapper: official key layout, attention paths, position embeddings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinokit.models import (DINOHead, MultiCropWrapper, interpolate_pos_embed, resnet18, resnet18_cifar,
                            resnet34, resnet50, vit_base, vit_small, vit_tiny)


def expected_vit_keys(dim: int, patch: int, img: int = 224, depth: int = 12) -> dict[str, tuple]:
    """Key -> shape of a DINO ViT backbone, written from the architecture definition."""
    n = (img // patch) ** 2
    keys = {"cls_token": (1, 1, dim), "pos_embed": (1, n + 1, dim),
            "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        keys.update({
            b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
            b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
            b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
            b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,)})
    keys.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return keys


def expected_resnet_keys(blocks=(3, 4, 6, 3), bottleneck=True, width=64, stem=7) -> dict[str, tuple]:
    """torchvision ResNet keys without ``fc`` (what dino_resnet50_pretrain.pth holds for ResNet-50)."""
    def bn(prefix, c):
        return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}
    keys = {"conv1.weight": (width, 3, stem, stem), **bn("bn1", width)}
    cin, grow = width, 4 if bottleneck else 1
    for li, n in enumerate(blocks, start=1):
        planes = width * 2 ** (li - 1)
        for bi in range(n):
            p = f"layer{li}.{bi}"
            if bottleneck:
                convs = [(planes, cin, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                convs = [(planes, cin, 3), (planes, planes, 3)]
            for ci, (o, i, k) in enumerate(convs, start=1):
                keys[f"{p}.conv{ci}.weight"] = (o, i, k, k)
                keys.update(bn(f"{p}.bn{ci}", o))
            if bi == 0 and (li > 1 or cin != planes * grow):
                keys[f"{p}.downsample.0.weight"] = (planes * grow, cin, 1, 1)
                keys.update(bn(f"{p}.downsample.1", planes * grow))
            cin = planes * grow
    return keys


def shapes(model) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("ctor,dim,patch", [(vit_small, 384, 16), (vit_small, 384, 8),
                                            (vit_base, 768, 16), (vit_base, 768, 8), (vit_tiny, 192, 16)])
def test_vit_state_dict_matches_official_layout(ctor, dim, patch):
    model = ctor(patch_size=patch)
    assert shapes(model) == expected_vit_keys(dim, patch)


def test_resnet50_state_dict_matches_torchvision_layout():
    model = resnet50()
    assert shapes(model) == expected_resnet_keys()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 2048)


@pytest.mark.parametrize("ctor,blocks", [(resnet18, (2, 2, 2, 2)), (resnet34, (3, 4, 6, 3))])
def test_basic_block_resnets_match_torchvision_layout(ctor, blocks):
    model = ctor()
    assert shapes(model) == expected_resnet_keys(blocks, bottleneck=False)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_cifar_resnet18_keeps_a_4x4_map_of_32px_images():
    model = resnet18_cifar().eval()
    assert shapes(model) == expected_resnet_keys((2, 2, 2, 2), bottleneck=False, width=32, stem=3)
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, 256, 4, 4)
    assert model(x).shape == (2, 256)


def test_dino_head_keys_and_output():
    head = DINOHead(384, 1000)
    assert shapes(head) == {"mlp.0.weight": (2048, 384), "mlp.0.bias": (2048,), "mlp.2.weight": (2048, 2048),
                            "mlp.2.bias": (2048,), "mlp.4.weight": (256, 2048), "mlp.4.bias": (256,),
                            "last_layer.weight_g": (1000, 1), "last_layer.weight_v": (1000, 256)}
    assert not head.last_layer.weight_g.requires_grad
    x = torch.randn(5, 384)
    out = head(x)
    # Unit-norm bottleneck times unit-norm rows: every logit is a cosine in [-1, 1].
    assert out.shape == (5, 1000) and out.abs().max() <= 1 + 1e-5
    z = F.normalize(head.mlp(x), dim=-1)
    w = head.last_layer.weight_v / head.last_layer.weight_v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, z @ w.T)


def test_head_with_bn_and_unfrozen_scale():
    head = DINOHead(192, 64, use_bn=True, norm_last_layer=False, nlayers=2, hidden_dim=32, bottleneck_dim=16)
    assert head.last_layer.weight_g.requires_grad
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "BatchNorm1d", "GELU", "Linear"]
    assert head(torch.randn(4, 192)).shape == (4, 64)


def test_forward_returns_normalised_cls_and_intermediate_layers():
    torch.manual_seed(0)
    model = vit_tiny(patch_size=8, img_size=32).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        cls = model(x)
        feats = model.forward_features(x)
        layers = model.get_intermediate_layers(x, n=4)
    assert cls.shape == (3, 192)
    torch.testing.assert_close(cls, feats[:, 0])
    assert len(layers) == 4 and all(t.shape == (3, 17, 192) for t in layers)
    torch.testing.assert_close(layers[-1], feats)
    # LayerNorm output (before the affine part, which is identity at init): zero mean per token.
    assert cls.mean(dim=-1).abs().max() < 1e-4


@pytest.mark.parametrize("shape, match", [((3, 32, 32), r"expected images \[B, 3, H, W\], got shape \(3, 32, 32\)"),
                                          ((1, 1, 32, 32), "got shape"),
                                          ((1, 3, 32, 6), "image of 6x32 px is smaller than the 8 px patch")])
def test_vit_input_that_does_not_fit_is_named(shape, match):
    from dinokit.errors import InputShapeError
    with pytest.raises(InputShapeError, match=match):
        vit_tiny(patch_size=8)(torch.randn(shape))


@pytest.mark.parametrize("explicit", [False, True])
def test_sdpa_path_equals_explicit_attention(explicit, monkeypatch):
    """The fused SDPA kernel (GPU / long sequences) and the matmul path (short CPU sequences)
    both agree with the attention-returning path."""
    import dinokit.models.vision_transformer as vt
    monkeypatch.setattr(vt, "_explicit_is_faster", lambda x: explicit)
    torch.manual_seed(0)
    model = vit_small(patch_size=16, img_size=64).eval()
    x = torch.randn(2, 3, 64, 48)
    blk = model.blocks[-1]
    with torch.no_grad():
        tokens = model.prepare_tokens(x)
        for b in model.blocks[:-1]:
            tokens = b(tokens)
        h = blk.norm1(tokens)
        fast, none = blk.attn(h)
        attn = model.get_last_selfattention(x)
        B, N, C = h.shape
        v = blk.attn.qkv(h).reshape(B, N, 3, blk.attn.num_heads, -1).permute(2, 0, 3, 1, 4)[2]
        slow = blk.attn.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
    assert none is None
    assert attn.shape == (2, 6, 1 + 4 * 3, 1 + 4 * 3)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 6, 13))
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


def reference_interpolation(pos_embed, h_patches, w_patches):
    """The release's recipe: bicubic with scale factor (grid + 0.1) / sqrt(N)."""
    side = math.sqrt(pos_embed.shape[1] - 1)
    grid = pos_embed[:, 1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, scale_factor=((h_patches + 0.1) / side, (w_patches + 0.1) / side), mode="bicubic")
    return torch.cat([pos_embed[:, :1], out.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])], 1)


@pytest.mark.parametrize("h,w", [(224, 160), (96, 320), (240, 240), (17 * 16, 13 * 16)])
def test_pos_embed_interpolation_non_square(h, w):
    torch.manual_seed(0)
    model = vit_small(patch_size=16).eval()
    out = model.interpolate_pos_encoding(torch.zeros(1, 1 + (h // 16) * (w // 16), 384), h, w)
    assert out.shape == (1, 1 + (h // 16) * (w // 16), 384)
    torch.testing.assert_close(out, reference_interpolation(model.pos_embed, h // 16, w // 16))
    torch.testing.assert_close(out[:, 0], model.pos_embed[:, 0])
    with torch.no_grad():
        assert model(torch.randn(1, 3, h, w)).shape == (1, 384)


def test_pos_embed_interpolation_preserves_a_smooth_field():
    """A position embedding that is a linear ramp stays a ramp after resizing (same orientation)."""
    side = 14
    ys, xs = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    field = torch.stack([ys, xs], -1).reshape(1, side * side, 2)
    pos = torch.cat([torch.zeros(1, 1, 2), field], 1)
    out = interpolate_pos_embed(pos, 7, 28)[0, 1:].reshape(7, 28, 2)
    assert (out[1:, :, 0] > out[:-1, :, 0]).all() and (out[:, 1:, 1] > out[:, :-1, 1]).all()
    assert torch.allclose(out[:, :, 0].std(1), torch.zeros(7), atol=1e-5)  # rows vary only along y


def test_native_size_returns_pos_embed_unchanged():
    model = vit_tiny(patch_size=16)
    x = torch.zeros(1, 197, 192)
    assert model.interpolate_pos_encoding(x, 224, 224) is model.pos_embed


def test_multicrop_wrapper_equals_per_crop_calls():
    torch.manual_seed(0)
    backbone = vit_tiny(patch_size=4, img_size=32)
    model = MultiCropWrapper(backbone, DINOHead(192, 128, hidden_dim=64, bottleneck_dim=32)).eval()
    crops = [torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)] + [torch.randn(3, 3, 16, 16) for _ in range(4)]
    calls = []
    backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        out = model(crops)
        calls_joint = list(calls)
        ref = torch.cat([model.head(backbone(c)) for c in crops])
    assert calls_joint == [6, 12]  # one backbone call per resolution run
    assert out.shape == (18, 128)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="non-empty list"):
        model([])


def test_drop_path_is_per_sample_and_off_in_eval():
    model = vit_tiny(patch_size=16, img_size=32, drop_path_rate=0.5)
    assert model.blocks[0].drop_path.__class__.__name__ == "Identity"
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("trainable_scale", [False, True])
def test_weight_norm_last_layer_gradients_match_autograd(trainable_scale):
    torch.manual_seed(0)
    head = DINOHead(16, 9000, hidden_dim=32, bottleneck_dim=8, norm_last_layer=not trainable_scale)
    with torch.no_grad():
        head.last_layer.weight_g.uniform_(0.5, 2.0)
    x = torch.randn(5, 16)
    target = torch.randn(5, 9000)
    (head(x) * target).sum().backward()
    v = head.last_layer.weight_v.detach().clone().requires_grad_()
    g = head.last_layer.weight_g.detach().clone().requires_grad_(trainable_scale)
    z = F.normalize(head.mlp(x), dim=-1).detach()
    (F.linear(z, v * g / v.norm(dim=1, keepdim=True)) * target).sum().backward()
    torch.testing.assert_close(head.last_layer.weight_v.grad, v.grad)
    if trainable_scale:
        torch.testing.assert_close(head.last_layer.weight_g.grad, g.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head.last_layer.weight.dtype == torch.bfloat16 and head(x).dtype == torch.bfloat16
