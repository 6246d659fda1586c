"""Aggregation rules over the site updates of one parameter group (order-independent numpy).

An update is a dict name -> array. Rules work key by key so a ResNet-50 never has to be
flattened into one huge vector; Krum and norm clipping accumulate their distances/norms
over keys. The robust rules treat sites as unweighted votes, as in their papers; below
three voters they reduce to the weighted mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RULES = ("fedavg", "trimmed_mean", "median", "krum")
Update = Mapping[str, np.ndarray]


def _stack(updates: Sequence[Update], key: str) -> np.ndarray:
    return np.stack([np.asarray(u[key], dtype=np.float64) for u in updates])


def pairwise_sq_distances(updates: Sequence[Update], keys: Sequence[str]) -> np.ndarray:
    """(n, n) squared L2 distances between whole updates, summed over keys."""
    n = len(updates)
    dist = np.zeros((n, n))
    for k in keys:
        flat = _stack(updates, k).reshape(n, -1)
        sq = (flat**2).sum(axis=1)
        dist += np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0)
    return dist


def krum_select(updates: Sequence[Update], keys: Sequence[str], byzantine: int) -> int:
    """Krum: the update with the smallest summed squared distance to its n - f - 2 nearest."""
    n = len(updates)
    dist = pairwise_sq_distances(updates, keys)
    neighbours = max(n - byzantine - 2, 1)
    scores = [np.sort(np.delete(dist[i], i))[:neighbours].sum() for i in range(n)]
    return int(np.argmin(scores))


def aggregate_updates(
    updates: Sequence[Update],
    weights: Sequence[float],
    keys: Sequence[str],
    rule: str = "fedavg",
    *,
    trim_fraction: float = 0.2,
    byzantine: int = 1,
) -> dict[str, np.ndarray]:
    """Combine the `keys` of n updates with `rule`; the output keeps float32."""
    if not updates:
        raise ValueError("aggregate_updates needs at least one update")
    if rule not in RULES:
        raise ValueError(f"unknown aggregation rule {rule!r}; expected one of {RULES}")
    n = len(updates)
    if rule == "krum" and n >= 3:
        chosen = updates[krum_select(updates, keys, byzantine)]
        return {k: np.asarray(chosen[k], dtype=np.float32) for k in keys}
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / n)
    out: dict[str, np.ndarray] = {}
    for k in keys:
        stack = _stack(updates, k)
        if rule == "fedavg" or n < 3:
            value = np.tensordot(w, stack, axes=1)
        elif rule == "median":
            value = np.median(stack, axis=0)
        else:  # trimmed_mean
            cut = min(int(np.floor(trim_fraction * n)), (n - 1) // 2)
            value = np.sort(stack, axis=0)[cut : n - cut].mean(axis=0)
        out[k] = value.astype(np.float32)
    return out


SITE_WEIGHTS = ("examples", "modality_balanced")


def site_weights(
    num_examples: Sequence[float], modalities: Sequence[str], scheme: str = "examples"
) -> list[float]:
    """Each site's weight in the shared parts' mean (`aggregate_updates` normalises them).

    ``examples``: FedAvg's, the site's examples themselves (passed on unchanged, so the mean is
    bit for bit the one FedAvg always computed). ``modality_balanced``: each
    modality present gets an equal share, split among its sites by their examples, so the
    shared trunk hears both modalities equally however many sites each has (a centralised
    P x K batch holds both modalities in equal parts).
    """
    if scheme not in SITE_WEIGHTS:
        raise ValueError(f"unknown site weighting {scheme!r}; expected one of {SITE_WEIGHTS}")
    if len(num_examples) != len(modalities):
        raise ValueError(
            f"site_weights: {len(num_examples)} example counts for {len(modalities)} modalities"
        )
    counts = np.asarray(num_examples, dtype=np.float64)
    if scheme == "examples":
        return [float(c) for c in counts]
    mods = np.asarray(modalities)
    # Each modality present gets 1 / (number present), split by examples: these sum to one.
    totals = np.array([counts[mods == m].sum() for m in mods])
    return [float(w) for w in counts / totals / len(set(modalities))]


def update_norm(update: Update, reference: Update, keys: Sequence[str]) -> float:
    """L2 norm of update - reference over `keys`."""
    total = 0.0
    for k in keys:
        d = np.asarray(update[k], dtype=np.float64) - np.asarray(reference[k], dtype=np.float64)
        total += float((d**2).sum())
    return total**0.5


def clip_update(
    update: Update, reference: Update, keys: Sequence[str], max_norm: float
) -> dict[str, np.ndarray]:
    """Scale update - reference down to L2 norm `max_norm` over `keys` (others unchanged)."""
    norm = update_norm(update, reference, keys)
    out = dict(update)
    if norm <= max_norm or norm == 0.0:
        return out
    scale = max_norm / norm
    for k in keys:
        ref = np.asarray(reference[k], dtype=np.float64)
        out[k] = (ref + (np.asarray(update[k], dtype=np.float64) - ref) * scale).astype(np.float32)
    return out


def rows_by_holders(
    reference: np.ndarray, updates: Sequence[np.ndarray], counts: Sequence[np.ndarray]
) -> np.ndarray:
    """Each row of a per-class array (a classifier's rows) averaged over the sites that hold
    that class, weighted by their counts of it: ``ref_c + sum_k n_kc (u_kc - ref_c) / sum_k
    n_kc``. A row no site holds keeps `reference`'s. The output keeps float32."""
    ref = np.asarray(reference, dtype=np.float64)
    n = np.stack([np.asarray(c, dtype=np.float64) for c in counts])  # (sites, classes)
    if n.shape[1] != ref.shape[0] or (n < 0).any():
        raise ValueError(
            f"per-class counts of shape {n.shape} do not fit {ref.shape[0]} non-negative rows"
        )
    deltas = np.stack([np.asarray(u, dtype=np.float64) for u in updates]) - ref
    held = n.sum(axis=0)
    weighted = np.einsum("sc,sc...->c...", n, deltas)
    scale = np.divide(1.0, held, out=np.zeros_like(held), where=held > 0)
    return (ref + scale.reshape(-1, *[1] * (ref.ndim - 1)) * weighted).astype(np.float32)
