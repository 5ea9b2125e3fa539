"""Student and teacher networks: backbone + DINO head each, teacher initialised from the student."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..models import (DINOHead, MultiCropWrapper, ResNet, build_backbone, interpolate_pos_embed, load_pretrained,
                      load_state_dict_strict)
from ..models.pretrained import arch_name
from .config import TrainConfig

__all__ = ["build_student_teacher", "pretrained_backbone", "load_backbone_weights", "has_batch_norms",
           "sync_batch_norms"]


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


def has_batch_norms(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def sync_batch_norms(student: MultiCropWrapper, teacher: MultiCropWrapper
                     ) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Both networks with ``SyncBatchNorm``, as the release does on GPUs: batch statistics over
    the whole batch of all processes, not each process's share. Parameter and buffer names stay
    those of ``BatchNorm`` (checkpoints are unchanged)."""
    return (torch.nn.SyncBatchNorm.convert_sync_batchnorm(student),
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(teacher))


def pretrained_backbone(source: str, cfg: TrainConfig) -> torch.nn.Module:
    """The backbone in ``--pretrained_weights``, or ``ConfigError`` when it is not the run's architecture."""
    pretrained = load_pretrained(source)  # its architecture read off its tensors
    found, wanted = pretrained.pretrained_cfg["arch"], arch_name(cfg.arch, cfg.patch_size)
    if found != wanted:
        raise ConfigError(f"--pretrained_weights {source} holds {found} weights but this run builds {wanted}: "
                          f"set --arch / --patch_size to {found}")
    return pretrained


def load_backbone_weights(student: MultiCropWrapper, teacher: MultiCropWrapper, pretrained: torch.nn.Module,
                          cfg: TrainConfig, source: str) -> None:
    """Start both backbones from ``pretrained`` (``pretrained_backbone``: DINO on one's own images
    from the release's ViT-S/16, say); the heads keep their fresh initialisation. A ViT's position
    embedding is resized to the grid of the global crops."""
    sd, target = pretrained.state_dict(), student.backbone
    if "pos_embed" in sd and sd["pos_embed"].shape != target.pos_embed.shape:
        grid = cfg.global_crops_size // cfg.patch_size
        sd["pos_embed"] = interpolate_pos_embed(sd["pos_embed"], grid, grid)
    load_state_dict_strict(target, sd, source=str(source))
    teacher.backbone.load_state_dict(target.state_dict())
