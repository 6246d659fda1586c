"""Parameter averaging over DP-SGD steps (``privacy.finetune.ema_decay``).

`ParameterAverage` keeps an exponential moving average of the trained weights over the DP
steps of a round (post-processing: free in privacy) that replaces them before the update
leaves the site (De et al. 2022).
"""

from __future__ import annotations

import torch
from torch import nn


class ParameterAverage:
    """Exponential moving average of a model's trainable parameters over optimiser steps."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = model
        self.decay = float(decay)
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.average = {n: p.detach().clone() for n, p in self.params}

    def update(self) -> None:
        with torch.no_grad():
            for name, param in self.params:
                self.average[name].mul_(self.decay).add_(param.detach(), alpha=1 - self.decay)

    def apply(self) -> None:
        """Write the averages into the model (before it is packaged or saved)."""
        with torch.no_grad():
            for name, param in self.params:
                param.copy_(self.average[name])
