"""Per-modality identity prototypes: the targets of L_align and what sites send the server."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class IdentityPrototypes:
    """Global prototypes (M, C, D) and which (modality, identity) pairs have one (M, C)."""

    means: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def empty(
        cls, num_modalities: int, num_classes: int, dim: int, device: torch.device | str = "cpu"
    ) -> IdentityPrototypes:
        return cls(
            torch.zeros(num_modalities, num_classes, dim, device=device),
            torch.zeros(num_modalities, num_classes, dtype=torch.bool, device=device),
        )

    @classmethod
    def from_sums(cls, sums: torch.Tensor, counts: torch.Tensor) -> IdentityPrototypes:
        """Means from per-modality sums (M, C, D) and counts (M, C)."""
        valid = counts > 0
        means = sums / counts.clamp(min=1e-12).unsqueeze(-1)
        return cls(torch.where(valid.unsqueeze(-1), means, torch.zeros_like(means)), valid)

    def to(self, device: torch.device | str) -> IdentityPrototypes:
        return IdentityPrototypes(self.means.to(device), self.valid.to(device))

    @torch.no_grad()
    def ema_update(
        self, features: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor, momentum: float
    ) -> None:
        """Centralised training: exponential moving average of the batch means per identity.

        A (modality, identity) seen for the first time takes the batch mean directly.
        """
        acc = PrototypeAccumulator(
            *self.valid.shape, self.means.shape[-1], device=self.means.device
        )
        acc.add(features, labels, modality)
        batch = IdentityPrototypes.from_sums(acc.sums, acc.counts)
        seen = batch.valid
        blended = torch.where(
            self.valid.unsqueeze(-1),
            momentum * self.means + (1.0 - momentum) * batch.means,
            batch.means,
        )
        self.means = torch.where(seen.unsqueeze(-1), blended, self.means)
        self.valid = self.valid | seen


class PrototypeAccumulator:
    """Running per-(modality, identity) sums and counts of detached features."""

    def __init__(
        self, num_modalities: int, num_classes: int, dim: int, device: torch.device | str = "cpu"
    ):
        self.sums = torch.zeros(num_modalities, num_classes, dim, device=device)
        self.counts = torch.zeros(num_modalities, num_classes, device=device)

    @torch.no_grad()
    def add(self, features: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor) -> None:
        num_classes = self.counts.shape[1]
        flat = modality.long() * num_classes + labels.long()
        self.sums.view(-1, self.sums.shape[-1]).index_add_(0, flat, features.detach().float())
        self.counts.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=self.counts.dtype))
