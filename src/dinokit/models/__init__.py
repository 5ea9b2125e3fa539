"""Networks of DINO: ViT and ResNet backbones, the projection head, the multi-crop wrapper."""

from .head import DINOHead, WeightNormLinear
from .multicrop import MultiCropWrapper
from .pretrained import (ARCHS, PRETRAINED_URLS, CheckpointError, backbone_state_dict, build_backbone,
                         infer_arch, load_checkpoint_file, load_pretrained, load_pretrained_weights,
                         load_state_dict_strict)
from .resnet import ResNet, resnet18, resnet18_cifar, resnet34, resnet50
from .vision_transformer import VisionTransformer, interpolate_pos_embed, vit_base, vit_small, vit_tiny

__all__ = [
    "VisionTransformer", "vit_tiny", "vit_small", "vit_base", "interpolate_pos_embed",
    "ResNet", "resnet18", "resnet34", "resnet50", "resnet18_cifar", "DINOHead", "WeightNormLinear", "MultiCropWrapper",
    "ARCHS", "PRETRAINED_URLS", "CheckpointError", "build_backbone", "load_pretrained", "load_pretrained_weights",
    "load_checkpoint_file", "backbone_state_dict", "infer_arch", "load_state_dict_strict",
]
