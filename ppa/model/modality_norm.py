"""Per-modality BatchNorm statistics inside the shared trunk (``model.trunk_stats=modality``).

Why: a federated site holds one modality, so while it trains, every BatchNorm of the shared
trunk normalises with the batch statistics of that modality alone: the trunk learns on
activations from which each modality's own mean and scale have been removed. With one set of
running statistics (averaged or re-measured over both modalities) the test-time trunk sees
something else, and the modality gap it never had to close reappears in the retrieval space.
Keeping the statistics per modality (weight and bias stay shared, as in SiloBN / FedBN's
split of statistics from learned parameters) makes test-time normalisation match training:
an infrared query is normalised with infrared statistics, a visible gallery image with
visible ones. Centrally, a batch that holds both modalities is normalised per modality, the
same rule.

The trunk's blocks (timm) call their norms with the activations only, so the encoder tells
every `ModalityBatchNorm2d` which rows belong to which modality for the duration of one trunk
pass (`modality_routing`). State-dict keys: ``<norm>.weight``, ``<norm>.bias`` and
``<norm>.stats.<modality>.running_mean|running_var|num_batches_tracked`` (aggregated within
each modality, like the stems).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ppa.data.records import Modality
from ppa.model.routing import route_by_modality

# model.trunk_affine: the per-modality trunk norms' weight and bias shared by both modalities
# or one pair per modality.
AFFINES = ("shared", "modality")


class ModalityBatchNorm2d(nn.Module):
    """BatchNorm2d with batch / running statistics per modality and a shared affine, or with
    ``affine="modality"`` an affine per modality too (``<norm>.stats.<modality>.weight|bias``:
    aggregated within each modality like the statistics, FedBN's split at modality level)."""

    def __init__(
        self,
        num_features: int,
        modalities: Sequence[Modality],
        eps: float = 1e-5,
        affine: str = "shared",
    ):
        super().__init__()
        if affine not in AFFINES:
            raise ValueError(f"model.trunk_affine must be one of {AFFINES}, got {affine!r}")
        self.modalities = tuple(modalities)
        self.num_features = int(num_features)
        per_modality = affine == "modality"
        if per_modality:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        else:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        self.stats = nn.ModuleDict(
            {
                m.value: nn.BatchNorm2d(num_features, eps=eps, affine=per_modality)
                for m in self.modalities
            }
        )
        self.modality: torch.Tensor | None = None  # set by `modality_routing` for one pass
        self.last_modality: torch.Tensor | None = None  # the last trainable pass's routing

    @classmethod
    def from_batch_norm(
        cls, norm: nn.BatchNorm2d, modalities: Sequence[Modality], affine: str = "shared"
    ) -> ModalityBatchNorm2d:
        """Every modality starts from `norm`'s running statistics (ImageNet ones for a
        pretrained trunk); the affine is copied (into every modality's with
        ``affine="modality"``), with its trainability."""
        out = cls(norm.num_features, modalities, eps=norm.eps, affine=affine)
        with torch.no_grad():
            if norm.affine:
                targets = list(out.stats.values()) if affine == "modality" else [out]
                for target in targets:
                    target.weight.copy_(norm.weight)
                    target.bias.copy_(norm.bias)
                    target.weight.requires_grad_(norm.weight.requires_grad)
                    target.bias.requires_grad_(norm.bias.requires_grad)
            if norm.track_running_stats:
                for stats in out.stats.values():
                    stats.running_mean.copy_(norm.running_mean)
                    stats.running_var.copy_(norm.running_var)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.modality is None:
            raise RuntimeError(
                "ModalityBatchNorm2d needs each row's modality: run the trunk through the "
                "encoder (forward_features), which routes it"
            )
        normed = route_by_modality(x, self.modality, self.stats, self.modalities)
        if self.weight is None:
            return normed  # each modality's BatchNorm applied its own affine
        if self.weight.requires_grad or self.bias.requires_grad:
            # A per-sample-gradient hook runs after the routing has ended and needs each
            # row's modality to recompute `normed` (ppa/dp/sgd.py).
            self.last_modality = self.modality
        return normed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def split_batch_norms(
    module: nn.Module, modalities: Sequence[Modality], affine: str = "shared"
) -> int:
    """Replace every BatchNorm2d below `module` by a `ModalityBatchNorm2d` (its affine shared
    or per modality); returns how many."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, ModalityBatchNorm2d.from_batch_norm(child, modalities, affine))
            replaced += 1
        else:
            replaced += split_batch_norms(child, modalities, affine)
    return replaced


def modality_norms(module: nn.Module) -> Iterator[ModalityBatchNorm2d]:
    for child in module.modules():
        if isinstance(child, ModalityBatchNorm2d):
            yield child


@contextmanager
def modality_routing(norms: Sequence[ModalityBatchNorm2d], modality: torch.Tensor):
    """Tell `norms` each row's modality index for one forward pass."""
    for norm in norms:
        norm.modality = modality
    try:
        yield
    finally:
        for norm in norms:
            norm.modality = None


_STATS_KEY = re.compile(
    r"^(?P<norm>.+)\.stats\.[^.]+\."
    r"(?P<buffer>running_mean|running_var|num_batches_tracked|weight|bias)$"
)


def seed_modality_statistics(
    state: Mapping[str, torch.Tensor], own_keys: Iterable[str]
) -> dict[str, torch.Tensor]:
    """`state` with one set of BatchNorm statistics copied into every modality's statistics.

    A start checkpoint trained with shared statistics (``model.trunk_stats=shared``) fits a
    per-modality trunk this way: each modality begins from the statistics both shared, as
    `ModalityBatchNorm2d.from_batch_norm` does for ImageNet weights (a per-modality affine,
    ``model.trunk_affine=modality``, likewise starts from the shared one). Keys `state`
    already holds per modality are kept; the shared keys that were copied are dropped.
    """
    out = dict(state)
    copied: set[str] = set()
    for key in own_keys:
        match = _STATS_KEY.match(key)
        if match is None or key in state:
            continue
        shared = f"{match['norm']}.{match['buffer']}"
        if shared in state:
            out[key] = state[shared].clone()
            copied.add(shared)
    for key in copied:
        del out[key]
    return out
