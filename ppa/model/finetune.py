"""Fine-tuning a pretrained start: which parameters train, BatchNorm frozen at its statistics.

Fine-tuning a public start trains only its late part: ``privacy.finetune.train`` lists the
parameter-name prefixes that are updated; everything else stays at the start. DP-SGD needs
this most (its noise grows with the number of trained parameters; Tramer and Boneh 2021, De
et al. 2022), and the non-DP reference of the privacy-utility curve (``privacy=finetune``)
fine-tunes the same parameters from the same start, so the two differ only by DP.

BatchNorm normalises a record with the statistics of the others. Instead of replacing it with
GroupNorm (which would throw away the start's statistics), every BatchNorm can be *frozen at
the start's running statistics*: it normalises in training exactly as in evaluation, a fixed
per-channel affine map that touches one record at a time, and the statistics never update.
Backbone BatchNorm affines are frozen too, except under the module prefixes of
``privacy.finetune.norm_affine``: there the per-channel scale and shift keep training over the
frozen statistics (scale-and-shift fine-tuning, a few hundred parameters per stage that
re-calibrate the public features to the sites' domain; still one record at a time, so DP-SGD
can train them). The BNNeck's affine (a parameter of `ModalityBatchNorm1d`, over frozen
statistics) stays trainable when ``train`` lists it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ppa.model.modality_norm import ModalityBatchNorm2d


class _FixedStatistics:
    """Mixin: BatchNorm that normalises with its running statistics in training as in
    evaluation, and never updates them. (``train()`` still switches the module's mode, so
    per-sample-gradient hooks, which only record in training mode, see a trained affine.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)  # type: ignore[attr-defined]
        return F.batch_norm(
            x,
            self.running_mean,  # type: ignore[attr-defined]
            self.running_var,  # type: ignore[attr-defined]
            self.weight,  # type: ignore[attr-defined]
            self.bias,  # type: ignore[attr-defined]
            training=False,
            eps=self.eps,  # type: ignore[attr-defined]
        )


class FrozenBatchNorm1d(_FixedStatistics, nn.BatchNorm1d):
    """A BatchNorm1d at fixed running statistics."""


class FrozenBatchNorm2d(_FixedStatistics, nn.BatchNorm2d):
    """A BatchNorm2d at fixed running statistics."""


_FROZEN = {nn.BatchNorm1d: FrozenBatchNorm1d, nn.BatchNorm2d: FrozenBatchNorm2d}


def is_frozen_norm(module: nn.Module) -> bool:
    """A BatchNorm that couples no records: fixed statistics (an affine over them, trainable
    or not, touches one record at a time)."""
    return isinstance(module, _FixedStatistics)


def freeze_batch_norm(model: nn.Module, train_affine: Sequence[str] = ()) -> list[str]:
    """Freeze every BatchNorm of `model` at its running statistics (per-modality trunk norms
    included) and its affine too, unless the norm's module name starts with one of
    `train_affine`; returns the names of the norms whose affine is frozen. State-dict keys
    are unchanged (the class changes, not the module). Raises when a prefix names no BatchNorm."""
    frozen, kept = [], set()
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, _FixedStatistics
        ):
            target = _FROZEN.get(type(module))
            if target is None:
                raise TypeError(f"{name}: cannot freeze {type(module).__name__}'s statistics")
            module.__class__ = target
        elif not isinstance(module, ModalityBatchNorm2d):
            # (A ModalityBatchNorm2d's statistics are BatchNorm2d children, frozen above; its
            # shared affine is a backbone BatchNorm affine like the others.)
            continue
        keep = [p for p in train_affine if name.startswith(p)]
        for p in module.parameters(recurse=False):
            p.requires_grad_(bool(keep))
        kept.update(keep)
        if not keep:
            frozen.append(name)
    unused = [p for p in train_affine if p not in kept]
    if unused:
        raise ValueError(
            f"privacy.finetune.norm_affine lists {unused}, which name no BatchNorm of the model"
        )
    return frozen


@dataclass(frozen=True)
class FinetuneSettings:
    """``privacy.finetune``: which parameters train (with or without DP) and how DP-SGD's step
    is shaped (the last three keys apply under DP only).

    train: parameter-name prefixes that are trained (all others are frozen); None = all,
        empty = none but the ``norm_affine`` norms.
    freeze_batch_norm: freeze BatchNorm at its statistics (needs a start with statistics).
    norm_affine: module-name prefixes of locked BatchNorms whose scale and shift still train
        (needs freeze_batch_norm).
    augmentation_multiplicity: K augmented copies of every sampled record; the record's
        gradient is the mean over its copies, clipped once (De et al. 2022).
    physical_batch: records per forward/backward pass; a larger Poisson batch is processed
        in chunks whose clipped sums add up before the noise (virtual steps, as opacus's
        BatchMemoryManager). None = one pass.
    ema_decay: decay of the parameter average per DP step (None = no averaging).
    """

    train: tuple[str, ...] | None = None
    freeze_batch_norm: bool = False
    norm_affine: tuple[str, ...] = ()
    augmentation_multiplicity: int = 1
    physical_batch: int | None = None
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        if self.train == () and not self.norm_affine:
            raise ValueError(
                "privacy.finetune.train is empty and privacy.finetune.norm_affine names no norm: "
                "nothing would train (null trains every parameter)"
            )
        if self.norm_affine and not self.freeze_batch_norm:
            raise ValueError(
                "privacy.finetune.norm_affine trains BatchNorm affines over frozen statistics: "
                "it needs privacy.finetune.freeze_batch_norm=true"
            )
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
                "without DP (privacy.enabled=false) only privacy.finetune.train, "
                "privacy.finetune.freeze_batch_norm and privacy.finetune.norm_affine apply"
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
        train = node.get("train")
        return cls(
            train=None if train is None else tuple(str(p) for p in train),
            freeze_batch_norm=bool(node.get("freeze_batch_norm", False)),
            norm_affine=tuple(str(p) for p in (node.get("norm_affine") or ())),
            augmentation_multiplicity=int(node.get("augmentation_multiplicity", 1)),
            physical_batch=None if physical is None else int(physical),
            ema_decay=None if ema is None else float(ema),
        )


def freeze_all_but(model: nn.Module, prefixes: Sequence[str] | None) -> list[str]:
    """Freeze every parameter whose name starts with none of `prefixes` (None: freeze
    nothing); returns their names.

    Raises when a prefix matches no parameter (a typo would silently train nothing)."""
    if prefixes is None:
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
        frozen += [
            f"{n} (BatchNorm, frozen statistics)"
            for n in freeze_batch_norm(model, train_affine=settings.norm_affine)
        ]
    return frozen
