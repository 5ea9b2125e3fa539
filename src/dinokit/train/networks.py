"""Student and teacher networks: backbone + DINO head each, teacher initialised from the student."""

from __future__ import annotations

import torch

from ..models import DINOHead, MultiCropWrapper, ResNet, build_backbone
from .config import TrainConfig

__all__ = ["build_student_teacher"]


def build_student_teacher(cfg: TrainConfig) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (with stochastic depth) and teacher of the same architecture, teacher = student."""
    # build_backbone passes the ViT-only arguments to ViTs alone.
    kw = dict(img_size=cfg.global_crops_size)
    student_bb = build_backbone(cfg.arch, cfg.patch_size, drop_path_rate=cfg.drop_path_rate, **kw)
    teacher_bb = build_backbone(cfg.arch, cfg.patch_size, **kw)
    if isinstance(student_bb, ResNet):  # weights in the layout of the channels-last activations
        student_bb, teacher_bb = (bb.to(memory_format=torch.channels_last) for bb in (student_bb, teacher_bb))
    dim = student_bb.embed_dim
    head = dict(use_bn=cfg.use_bn_in_head, nlayers=cfg.head_nlayers, hidden_dim=cfg.head_hidden_dim,
                bottleneck_dim=cfg.head_bottleneck_dim)
    student = MultiCropWrapper(student_bb, DINOHead(dim, cfg.out_dim, norm_last_layer=cfg.norm_last_layer, **head))
    teacher = MultiCropWrapper(teacher_bb, DINOHead(dim, cfg.out_dim, **head))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    return student, teacher
