"""FedRS's restricted softmax: a site's identity logits of classes it does not hold, scaled.

A camera site holds a few of the federation's identities. With a plain softmax every step
pushes the classifier rows of all the others away from the site's features, and FedAvg then
averages those pushes into rows that other sites trained toward their images of that identity.
Scaling an absent class's logit by ``alpha`` (Li & Zhan, KDD 2021) scales that push by
``alpha``: at 0 a site's loss neither moves the rows of identities it has never seen nor uses
them as negatives; at 1 it is the plain softmax.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def absent_class_logit_scale(
    labels: Iterable[int], num_classes: int, alpha: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Per-class logit factors (`num_classes`,): 1 for the classes in `labels`, `alpha` else."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"federation.absent_class_logit_scale must be in [0, 1], got {alpha}")
    held = sorted(set(int(label) for label in labels))
    if held and (held[0] < 0 or held[-1] >= num_classes):
        raise ValueError(f"labels outside [0, {num_classes}): {held[0]}..{held[-1]}")
    scale = torch.full((num_classes,), float(alpha), device=device)
    scale[torch.tensor(held, dtype=torch.long, device=device)] = 1.0
    return scale
