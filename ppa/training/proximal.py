"""Local-training regularisers against client drift: FedProx's proximal term.

FedProx (Li et al., MLSys 2020) adds (mu / 2) * |w - w_global|^2 to a site's local objective,
so its local steps cannot wander far from the round's global model however different its
data is. The term's gradient is mu * (w - w_global); it is added to each parameter's gradient
by a hook during the backward pass, so the training step itself is unchanged (and DP-SGD's
per-record clipping never sees it: it does not depend on any record).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ProximalTerm:
    """Gradient hooks adding mu * (w - anchor) to every trainable parameter of a model.

    Attach right after loading the global model (the anchor is copied then); `remove()` when
    the round ends. `value()` is the term itself, for logging.
    """

    mu: float
    params: list[nn.Parameter] = field(default_factory=list)
    anchors: list[torch.Tensor] = field(default_factory=list)
    handles: list = field(default_factory=list)

    @classmethod
    def attach(cls, model: nn.Module, mu: float) -> ProximalTerm:
        if mu <= 0:
            raise ValueError(f"federation.proximal_mu must be > 0 to attach, got {mu}")
        term = cls(float(mu))
        for p in model.parameters():
            if not p.requires_grad:
                continue
            anchor = p.detach().clone()
            term.params.append(p)
            term.anchors.append(anchor)
            term.handles.append(p.register_hook(term._hook(p, anchor)))
        return term

    def _hook(self, param: nn.Parameter, anchor: torch.Tensor):
        mu = self.mu

        def add_proximal_gradient(grad: torch.Tensor) -> torch.Tensor:
            return grad + mu * (param.detach() - anchor).to(grad.dtype)

        return add_proximal_gradient

    def value(self) -> float:
        """(mu / 2) * |w - anchor|^2 over the hooked parameters."""
        pairs = zip(self.params, self.anchors, strict=True)
        total = sum(float(((p.detach() - a) ** 2).sum()) for p, a in pairs)
        return 0.5 * self.mu * total

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
