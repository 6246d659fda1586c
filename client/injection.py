"""Fault and attack injection (federation.inject) for robustness experiments and tests.

A listed site either raises inside the ClientApp (a crash mid-round) or returns a poisoned
update built from its honest one. Off unless configured.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from omegaconf import DictConfig

ATTACKS = ("scale", "signflip", "nan")
RUNNING_STATS = ("running_mean", "running_var")


class InjectedFaultError(RuntimeError):
    """The crash a site was configured to simulate."""


def maybe_fail(inject: DictConfig | None, site: str, server_round: int) -> None:
    if inject is None or site not in list(inject.fail_sites or []):
        return
    rounds = list(inject.fail_rounds or [])
    if not rounds or server_round in rounds:
        raise InjectedFaultError(f"site {site!r}: injected failure in round {server_round}")


def poison(
    arrays: Mapping[str, np.ndarray],
    global_arrays: Mapping[str, np.ndarray],
    inject: DictConfig | None,
    site: str,
) -> dict[str, np.ndarray]:
    """The update a malicious `site` sends instead of `arrays` (unchanged for honest sites)."""
    out = dict(arrays)
    attack = _attack_name(inject)
    if attack is None or site not in list(inject.attack_sites or []):
        return out
    factor = float(inject.attack_factor)
    for key, value in arrays.items():
        if not np.issubdtype(value.dtype, np.floating):
            continue
        if attack != "nan" and key.endswith(RUNNING_STATS):
            # Scaled/flipped BatchNorm statistics (negative variances) are rejected by the
            # server's validation outright; the attack targets the learned parameters, which
            # pass validation and must be out-voted by the robust rule.
            continue
        reference = np.asarray(global_arrays[key], dtype=np.float32)
        delta = value.astype(np.float32) - reference
        if attack == "scale":
            poisoned = reference + factor * delta
        elif attack == "signflip":
            poisoned = reference - factor * delta
        else:
            poisoned = np.full_like(reference, np.nan)
        out[key] = poisoned.astype(value.dtype)
    return out


def _attack_name(inject: DictConfig | None) -> str | None:
    """The configured attack; Hydra parses an unquoted `attack=nan` as a float NaN."""
    if inject is None or inject.get("attack") is None:
        return None
    value = inject.attack
    if isinstance(value, float) and np.isnan(value):
        return "nan"
    name = str(value).lower()
    if name not in ATTACKS:
        raise ValueError(f"federation.inject.attack={value!r}; expected one of {ATTACKS}")
    return name
