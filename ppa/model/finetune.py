"""Fine-tuning a pretrained start: which parameters train, BatchNorm frozen in evaluation mode.

Fine-tuning a public start trains only its late part: ``privacy.finetune.train`` lists the
parameter-name prefixes that are updated; everything else stays at the start. DP-SGD needs
this most (its noise grows with the number of trained parameters; Tramer and Boneh 2021, De
et al. 2022), and the non-DP reference of the privacy-utility curve (``privacy=finetune``)
fine-tunes the same parameters from the same start, so the two differ only by DP.

BatchNorm normalises a record with the statistics of the others. Instead of replacing it with
GroupNorm (which would throw away the start's statistics), every BatchNorm can be *frozen in
evaluation mode*: it normalises with the start's running statistics, a fixed per-channel
affine map that touches one record at a time, and ``model.train()`` cannot switch it back.
Backbone BatchNorm affines are frozen too; the BNNeck's affine (a parameter of
`ModalityBatchNorm1d`, over frozen statistics) stays trainable when listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig
from torch import nn

from ppa.model.modality_norm import ModalityBatchNorm2d


class _EvalModeOnly:
    """Mixin: the module stays in evaluation mode whatever ``train()`` asks."""

    def train(self, mode: bool = True):
        return super().train(False)  # type: ignore[misc]


class FrozenBatchNorm1d(_EvalModeOnly, nn.BatchNorm1d):
    """A BatchNorm1d locked in evaluation mode (running statistics never change)."""


class FrozenBatchNorm2d(_EvalModeOnly, nn.BatchNorm2d):
    """A BatchNorm2d locked in evaluation mode (running statistics never change)."""


_FROZEN = {nn.BatchNorm1d: FrozenBatchNorm1d, nn.BatchNorm2d: FrozenBatchNorm2d}


def is_frozen_norm(module: nn.Module) -> bool:
    """A BatchNorm that couples no records: locked in eval mode, no trainable parameter."""
    return isinstance(module, _EvalModeOnly) and not any(
        p.requires_grad for p in module.parameters(recurse=False)
    )


def freeze_batch_norm(model: nn.Module) -> list[str]:
    """Lock every BatchNorm of `model` in evaluation mode and freeze its affine (per-modality
    trunk norms included); returns their names. State-dict keys are unchanged (the class
    changes, not the module)."""
    frozen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, _EvalModeOnly
        ):
            target = _FROZEN.get(type(module))
            if target is None:
                raise TypeError(f"{name}: cannot freeze {type(module).__name__} in eval mode")
            module.__class__ = target
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
            module.eval()
            frozen.append(name)
        elif isinstance(module, ModalityBatchNorm2d):
            # Its statistics are BatchNorm2d children (frozen by the branch above); the shared
            # affine is a backbone BatchNorm affine, frozen like the others.
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
            frozen.append(name)
    return frozen


@dataclass(frozen=True)
class FinetuneSettings:
    """``privacy.finetune``: which parameters train (with or without DP) and how DP-SGD's step
    is shaped (the last three keys apply under DP only).

    train: parameter-name prefixes that are trained (all others are frozen); empty = all.
    freeze_batch_norm: lock BatchNorm in evaluation mode (needs a start with statistics).
    augmentation_multiplicity: K augmented copies of every sampled record; the record's
        gradient is the mean over its copies, clipped once (De et al. 2022).
    physical_batch: records per forward/backward pass; a larger Poisson batch is processed
        in chunks whose clipped sums add up before the noise (virtual steps, as opacus's
        BatchMemoryManager). None = one pass.
    ema_decay: decay of the parameter average per DP step (None = no averaging).
    """

    train: tuple[str, ...] = ()
    freeze_batch_norm: bool = False
    augmentation_multiplicity: int = 1
    physical_batch: int | None = None
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        if self.augmentation_multiplicity < 1:
            raise ValueError(
                f"privacy.finetune.augmentation_multiplicity must be >= 1, got "
                f"{self.augmentation_multiplicity}"
            )
        if self.physical_batch is not None and self.physical_batch < 1:
            raise ValueError(
                f"privacy.finetune.physical_batch must be >= 1, got {self.physical_batch}"
            )
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ValueError(f"privacy.finetune.ema_decay must be in [0, 1), got {self.ema_decay}")

    def without_dp_steps(self) -> FinetuneSettings:
        """The settings for non-DP training, which has no Poisson batches, per-record
        gradients or DP steps to average: raises when a step-shaping key is set."""
        shaping = {
            "augmentation_multiplicity": self.augmentation_multiplicity != 1,
            "physical_batch": self.physical_batch is not None,
            "ema_decay": self.ema_decay is not None,
        }
        if any(shaping.values()):
            keys = ", ".join(f"privacy.finetune.{k}" for k, v in shaping.items() if v)
            raise ValueError(
                f"{keys} shape DP-SGD's step; "
                "without DP (privacy.enabled=false) only privacy.finetune.train and "
                "privacy.finetune.freeze_batch_norm apply"
            )
        return self

    @classmethod
    def from_config(cls, cfg: DictConfig) -> FinetuneSettings:
        """Read ``cfg.privacy.finetune`` (absent: train everything, no extras)."""
        node = cfg.privacy.get("finetune")
        if not node:
            return cls()
        physical = node.get("physical_batch")
        ema = node.get("ema_decay")
        return cls(
            train=tuple(str(p) for p in (node.get("train") or ())),
            freeze_batch_norm=bool(node.get("freeze_batch_norm", False)),
            augmentation_multiplicity=int(node.get("augmentation_multiplicity", 1)),
            physical_batch=None if physical is None else int(physical),
            ema_decay=None if ema is None else float(ema),
        )


def freeze_all_but(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Freeze every parameter whose name starts with none of `prefixes`; returns their names.

    Raises when a prefix matches no parameter (a typo would silently train nothing)."""
    if not prefixes:
        return []
    names = [name for name, _ in model.named_parameters()]
    unused = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unused:
        raise ValueError(
            f"privacy.finetune.train lists {unused}, which match no parameter of the model "
            f"(parameters start with {sorted({n.split('.')[0] for n in names})})"
        )
    frozen = []
    for name, param in model.named_parameters():
        if not any(name.startswith(p) for p in prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def prepare_finetune(model: nn.Module, settings: FinetuneSettings) -> list[str]:
    """Freeze what the recipe does not train (and BatchNorm, if asked); returns the frozen
    parameter and module names. Call before attaching per-sample-gradient hooks."""
    frozen = freeze_all_but(model, settings.train)
    if settings.freeze_batch_norm:
        frozen += [f"{n} (BatchNorm, eval mode)" for n in freeze_batch_norm(model)]
    return frozen
