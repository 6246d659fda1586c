"""Per-modality modules applied to a batch that may hold both modalities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ppa.data.records import Modality


def route_by_modality(
    x: torch.Tensor,
    modality: torch.Tensor,
    modules: Mapping[str, nn.Module],
    modalities: Sequence[Modality],
) -> torch.Tensor:
    """Apply ``modules[modalities[m].value]`` to the rows of `x` whose modality index is m,
    keeping the batch order (one call per modality present; a one-modality batch, the usual
    case at a federated site, is passed through whole)."""
    present = torch.unique(modality).tolist()
    if len(present) == 1:
        return modules[modalities[present[0]].value](x)
    out: torch.Tensor | None = None
    for idx in present:
        sel = (modality == idx).nonzero(as_tuple=True)[0]
        y = modules[modalities[idx].value](x.index_select(0, sel))
        if out is None:
            out = y.new_empty((x.shape[0], *y.shape[1:]))
        out = out.index_copy(0, sel, y)
    assert out is not None
    return out
