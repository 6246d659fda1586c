"""Model factory: `create_model(model_cfg, num_classes)` -> PPAEncoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ppa.model.encoder import (
    NORMS,
    EncoderOutput,
    ModalityOffsets,
    PPAEncoder,
    create_backbone,
)
from ppa.model.pooling import GeM, keypoint_pool

__all__ = [
    "NORMS",
    "EncoderOutput",
    "GeM",
    "ModalityOffsets",
    "PPAEncoder",
    "create_model",
    "keypoint_pool",
]


def create_model(model_cfg: DictConfig | Mapping[str, Any], num_classes: int) -> PPAEncoder:
    """Build the PPA encoder described by a `configs/model/*.yaml` node.

    ``model.norm`` (default ``batch``) picks BatchNorm or GroupNorm (``model.norm_groups``,
    default 32) in the backbone and neck; ``privacy=dp`` sets ``group``. The key is part of the
    model config that checkpoints store, so a DP model is rebuilt as one.
    """
    cfg = OmegaConf.create(dict(model_cfg)) if not isinstance(model_cfg, DictConfig) else model_cfg
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    norm = str(cfg.get("norm", "batch"))
    if norm not in NORMS:
        raise ValueError(f"model.norm must be one of {NORMS}, got {norm!r}")
    raw_kwargs = cfg.get("arch_kwargs")
    arch_kwargs = OmegaConf.to_container(raw_kwargs, resolve=True) if raw_kwargs else {}
    backbone = create_backbone(
        cfg.arch,
        pretrained=bool(cfg.get("pretrained", False)),
        pretrained_path=cfg.get("pretrained_path"),
        arch_kwargs=arch_kwargs,
        last_stride=int(cfg.get("last_stride", 1)),
        norm=norm,
        norm_groups=int(cfg.get("norm_groups", 32)),
    )
    return PPAEncoder(
        backbone,
        num_classes,
        gem_p=float(cfg.get("gem_p", 3.0)),
        learn_gem_p=bool(cfg.get("learn_gem_p", True)),
        norm=norm,
        neck_stats=str(cfg.get("neck_stats", "modality")),
    )
