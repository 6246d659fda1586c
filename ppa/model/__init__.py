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
    default 32) in the backbone and neck; ``privacy=dp`` sets ``group``. ``model.pretrained_path``
    is a PPA checkpoint (a public pretraining: every weight but the classifier is loaded,
    `ppa.public_start`) or timm backbone weights. The key is part of the
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
    weights_path = cfg.get("pretrained_path")
    start = None
    if weights_path:
        # A PPA checkpoint (public pretraining) starts the whole encoder; any other file is
        # timm backbone weights. Imported here: ppa.public_start reads datasets.
        from ppa.public_start import read_start

        start = read_start(weights_path)
    backbone = create_backbone(
        cfg.arch,
        pretrained=bool(cfg.get("pretrained", False)) and start is None,
        pretrained_path=None if start is not None else weights_path,
        arch_kwargs=arch_kwargs,
        last_stride=int(cfg.get("last_stride", 1)),
        norm=norm,
        norm_groups=int(cfg.get("norm_groups", 32)),
    )
    model = PPAEncoder(
        backbone,
        num_classes,
        gem_p=float(cfg.get("gem_p", 3.0)),
        learn_gem_p=bool(cfg.get("learn_gem_p", True)),
        norm=norm,
        neck_stats=str(cfg.get("neck_stats", "modality")),
        trunk_stats=str(cfg.get("trunk_stats", "shared")),
        trunk_affine=str(cfg.get("trunk_affine", "shared")),
        classifier=str(cfg.get("classifier", "learned")),
        cosine_scale=float(cfg.get("cosine_scale", 16.0)),
        cosine_margin=float(cfg.get("cosine_margin", 0.0)),
        classifier_rank=int(cfg.get("classifier_rank", 16)),
        stems=str(cfg.get("stems", "modality")),
    )
    if start is not None:
        from ppa.model.start_weights import load_start_weights

        load_start_weights(model, start, str(weights_path))
    return model
