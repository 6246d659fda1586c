"""The optimiser of the reference recipe and its epoch schedule (warm-up, step decay)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from omegaconf import DictConfig

from ppa.model import PPAEncoder


def create_optimizer(model: PPAEncoder, optimizer_cfg: DictConfig) -> torch.optim.SGD:
    """SGD-Nesterov with the backbone / head learning-rate split of the reference recipe."""
    groups = [
        {
            "params": [p for p in model.backbone_parameters() if p.requires_grad],
            "lr": float(optimizer_cfg.lr_backbone),
            "name": "backbone",
        },
        {
            "params": [p for p in model.head_parameters() if p.requires_grad],
            "lr": float(optimizer_cfg.lr_head),
            "name": "head",
        },
    ]
    for g in groups:
        g["base_lr"] = g["lr"]
    return torch.optim.SGD(
        groups,
        lr=float(optimizer_cfg.lr_head),
        momentum=float(optimizer_cfg.momentum),
        nesterov=bool(optimizer_cfg.nesterov),
        weight_decay=float(optimizer_cfg.weight_decay),
    )


def lr_factor(epoch: int, warmup_epochs: int, steps: Iterable[int], gamma: float) -> float:
    """Linear warm-up over `warmup_epochs`, then x gamma at every step epoch (0-based epoch)."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    return gamma ** sum(1 for s in steps if epoch >= s)


def set_epoch_lr(optimizer: torch.optim.Optimizer, epoch: int, train_cfg: DictConfig) -> float:
    """Set every group's lr for `epoch` (global epoch count, also across federated rounds)."""
    factor = lr_factor(
        epoch, int(train_cfg.warmup_epochs), list(train_cfg.lr_steps), float(train_cfg.lr_gamma)
    )
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return factor
