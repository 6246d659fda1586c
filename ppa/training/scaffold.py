"""SCAFFOLD's site side: local gradients corrected by control variates against client drift.

SCAFFOLD (Karimireddy et al., ICML 2020) keeps a control variate per site, ``c_i`` (an
estimate of the site's own mean gradient), and a global one, ``c`` (the weighted mean of the
sites'). Every local step uses ``g_i(y) + c - c_i`` instead of ``g_i(y)``: the site's own
gradient direction is swapped for the federation's, so a site that holds one modality stops
pulling the shared parts toward what suits that modality alone. After the round the site
re-estimates its mean gradient from how far it moved (the paper's option II),

    c_i+ = c_i - c + (x - y_i) / s,

where ``x`` is the round's global model, ``y_i`` the site's after training and ``s`` the
round's step-size sum of the parameter's optimiser group (the lr of every step, divided by
``1 - momentum``: SGD with momentum moves about ``lr / (1 - momentum)`` per unit of a steady
gradient). The site keeps ``c_i`` (the ClientApp's ``context.state``) and sends
``c_i+ - c_i``; the server folds those into ``c`` (server/control_variates.py).

The correction is added to each parameter's gradient by a hook during the backward pass, so
the training step itself is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


class ControlVariateError(ValueError):
    """Control variates that do not fit the model (names or shapes)."""


def control_keys(model: nn.Module, keys: list[str]) -> list[str]:
    """The trainable parameters among `keys` (state-dict names): what control variates cover.

    Normalisation running statistics are not trained by gradients and carry none.
    """
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return [k for k in keys if k in trainable]


@dataclass
class ControlledRound:
    """One round of SCAFFOLD at a site: gradient hooks adding ``c - c_i``, the step-size sum
    per parameter, and the new control variate when the round ends.

    `attach` right after loading the global model (its values are the round's ``x``);
    `finish` after the last local step (it removes the hooks and returns ``c_i+`` and
    ``c_i+ - c_i``).
    """

    params: dict[str, nn.Parameter]
    start: dict[str, torch.Tensor]
    global_control: dict[str, torch.Tensor]
    site_control: dict[str, torch.Tensor]
    group_of: dict[str, int]
    momentum: float
    step_sums: list[float] = field(default_factory=list)
    handles: list = field(default_factory=list)

    @classmethod
    def attach(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        keys: list[str],
        global_control: Mapping[str, np.ndarray] | None,
        site_control: Mapping[str, np.ndarray] | None,
    ) -> ControlledRound:
        """Hooks on the parameters named `keys`; missing control variates count as zero (the
        first round, or a site that restarted)."""
        named = dict(model.named_parameters())
        params = {k: named[k] for k in keys}
        group_of: dict[str, int] = {}
        by_id = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
        for k, p in params.items():
            if id(p) not in by_id:
                raise ControlVariateError(f"parameter {k!r} is not in the optimiser")
            group_of[k] = by_id[id(p)]
        momentum = {float(g.get("momentum", 0.0)) for g in optimizer.param_groups}
        if len(momentum) != 1:
            raise ControlVariateError(f"optimiser groups with different momenta: {momentum}")
        rnd = cls(
            params=params,
            start={k: p.detach().clone() for k, p in params.items()},
            global_control=_as_tensors(global_control, params, "global"),
            site_control=_as_tensors(site_control, params, "site"),
            group_of=group_of,
            momentum=momentum.pop(),
            step_sums=[0.0] * len(optimizer.param_groups),
        )
        for k, p in params.items():
            correction = rnd.global_control[k] - rnd.site_control[k]
            rnd.handles.append(p.register_hook(_add(correction)))
        rnd.handles.append(optimizer.register_step_post_hook(rnd._count_step))
        return rnd

    def _count_step(self, optimizer: torch.optim.Optimizer, *_: object) -> None:
        for i, group in enumerate(optimizer.param_groups):
            self.step_sums[i] += float(group["lr"])

    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Remove the hooks; return (``c_i+``, ``c_i+ - c_i``) as float32 arrays. A group that
        took no step leaves its parameters' control variates unchanged."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        new: dict[str, np.ndarray] = {}
        delta: dict[str, np.ndarray] = {}
        for k, p in self.params.items():
            steps = self.step_sums[self.group_of[k]] / (1.0 - self.momentum)
            old = self.site_control[k]
            if steps > 0:
                moved = (self.start[k] - p.detach()) / steps
                updated = old - self.global_control[k] + moved
            else:
                updated = old
            new[k] = updated.float().cpu().numpy()
            delta[k] = (updated - old).float().cpu().numpy()
        return new, delta


def _add(correction: torch.Tensor):
    def add_correction(grad: torch.Tensor) -> torch.Tensor:
        return grad + correction.to(grad.dtype)

    return add_correction


def _as_tensors(
    arrays: Mapping[str, np.ndarray] | None, params: Mapping[str, nn.Parameter], which: str
) -> dict[str, torch.Tensor]:
    out = {}
    for k, p in params.items():
        if arrays is None or k not in arrays:
            out[k] = torch.zeros_like(p, dtype=torch.float32).detach()
            continue
        value = np.asarray(arrays[k])
        if tuple(value.shape) != tuple(p.shape):
            raise ControlVariateError(
                f"{which} control variate {k!r} has shape {tuple(value.shape)}, the parameter "
                f"{tuple(p.shape)}"
            )
        out[k] = torch.as_tensor(value, dtype=torch.float32, device=p.device).clone()
    return out
