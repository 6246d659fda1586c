"""BNNeck with per-modality statistics: one affine, a BatchNorm's statistics per modality."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ppa.data.records import Modality
from ppa.model.routing import route_by_modality


class ModalityBatchNorm1d(nn.Module):
    """BatchNorm1d whose batch / running statistics are kept per modality.

    Why: a federated site holds one modality, so during local training its BNNeck normalises
    with that modality's statistics only; a single set of running statistics averaged over
    sites then mis-normalises both modalities at test time and opens a modality gap in the
    retrieval space. Keeping the statistics per modality (the weight and bias stay shared)
    makes test-time normalisation match training, in a federation and centrally alike.
    State-dict keys: ``weight``, ``bias`` and ``stats.<modality>.running_mean|running_var|
    num_batches_tracked`` (aggregated within each modality, like the stems).
    """

    def __init__(self, dim: int, modalities: Sequence[Modality]):
        super().__init__()
        self.modalities = tuple(modalities)
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.stats = nn.ModuleDict(
            {m.value: nn.BatchNorm1d(dim, affine=False) for m in self.modalities}
        )

    def forward(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        normed = route_by_modality(x, modality, self.stats, self.modalities)
        return normed * self.weight + self.bias
