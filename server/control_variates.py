"""SCAFFOLD's server side: the global control variate ``c`` (ppa/training/scaffold.py).

``c`` is the mean of the sites' control variates ``c_i``, weighted like FedAvg (by training
images). Sites send ``c_i+ - c_i``; with ``S`` the sites of the round that hold a parameter and
``N`` every site seen so far that holds it,

    c <- c + (|S| / N) * sum_{i in S} w_i (c_i+ - c_i),     w_i = n_i / sum_{j in S} n_j,

which keeps ``c`` equal to the weighted mean of all ``c_i`` when every site takes part in
every round (the paper's update, weighted), and moves it by the sampled share otherwise.
A parameter is held by every site (the shared parts) or by the sites of one modality (a stem,
an offset), so the stems get a control variate per modality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ppa.wire import SHARED, MalformedUpdateError, parameter_group


def _holder(key: str) -> str:
    group = parameter_group(key)
    return SHARED if group.kind == SHARED else f"{group.kind}.{group.modality.value}"


class GlobalControlVariate:
    """``c`` per trainable parameter, zeros until the first round's deltas arrive."""

    def __init__(self, reference: Mapping[str, np.ndarray], keys: Sequence[str]):
        self.control = {k: np.zeros_like(np.asarray(reference[k]), np.float32) for k in keys}
        # Per holder group: the sites that have ever sent deltas for it (N of the update).
        self.seen: dict[str, set[str]] = {}

    def arrays(self) -> dict[str, np.ndarray]:
        """What the server sends with the round's global model."""
        return {k: v.copy() for k, v in self.control.items()}

    def validate(self, delta: Mapping[str, np.ndarray], expected: Sequence[str], site: str) -> None:
        """A site's ``c_i+ - c_i``: exactly the `expected` keys, the right shapes, finite."""
        wanted = [k for k in expected if k in self.control]
        if set(delta) != set(wanted):
            missing = sorted(set(wanted) - set(delta))[:3]
            extra = sorted(set(delta) - set(wanted))[:3]
            raise MalformedUpdateError(
                f"site {site!r}: wrong control-variate names (missing {missing}, "
                f"unexpected {extra})"
            )
        for k in wanted:
            value = np.asarray(delta[k])
            if value.shape != self.control[k].shape:
                raise MalformedUpdateError(
                    f"site {site!r}: control variate {k!r} has shape {value.shape}, expected "
                    f"{self.control[k].shape}"
                )
            if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
                raise MalformedUpdateError(
                    f"site {site!r}: control variate {k!r} is not finite floats"
                )

    def update(
        self,
        sites: Sequence[str],
        deltas: Sequence[Mapping[str, np.ndarray]],
        weights: Sequence[float],
    ) -> None:
        """Fold one round's deltas into ``c`` (the rule in the module docstring)."""
        holders: dict[str, list[int]] = {}
        for i, delta in enumerate(deltas):
            for group in {_holder(k) for k in delta}:
                holders.setdefault(group, []).append(i)
        for group, members in holders.items():
            self.seen.setdefault(group, set()).update(sites[i] for i in members)
        for k in self.control:
            group = _holder(k)
            members = [i for i in holders.get(group, []) if k in deltas[i]]
            if not members:
                continue
            total = float(sum(weights[i] for i in members))
            share = len(members) / len(self.seen[group])
            step = sum(
                (float(weights[i]) / total) * np.asarray(deltas[i][k], np.float64) for i in members
            )
            self.control[k] = (self.control[k] + share * step).astype(np.float32)

    def state_dict(self) -> dict:
        return {
            "control": {k: v.copy() for k, v in self.control.items()},
            "seen": {g: sorted(s) for g, s in self.seen.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        for k, v in state["control"].items():
            if k in self.control:
                self.control[k] = np.asarray(v, np.float32).copy()
        self.seen = {g: set(s) for g, s in state.get("seen", {}).items()}
