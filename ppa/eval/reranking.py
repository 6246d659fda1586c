"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), reported apart from the main protocol.

Re-ranking uses the whole test set at once (queries and gallery as each other's context), so
published VI-ReID tables list it separately; `evaluate` does the same (``eval.rerank``).

Definitions, over the N = Q + G test features of one setting and their distances d:

- d is scaled per row by the row's largest distance (the neighbourhoods below are ranked on
  it, and the final mix uses it);
- N(i, k): the k + 1 nearest entries of i (itself included);
- R(i, k) = {j in N(i, k) : i in N(j, k)}, the k-reciprocal neighbours;
- R*(i) = R(i, k1) grown by every R(j, k1 / 2), j in R(i, k1), that shares more than two
  thirds of its entries with R(i, k1);
- V_i: weights exp(-d(i, j)) on j in R*(i), zero elsewhere, summing to 1; with k2 > 1 each
  V_i is replaced by the mean of the V of its k2 nearest entries (local query expansion);
- Jaccard distance of query q and gallery g: 1 - sum min(V_q, V_g) / sum max(V_q, V_g);
- the re-ranked distance: (1 - lambda) * Jaccard + lambda * d.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor

from ppa.eval.metrics import pairwise_distance

EXPANSION_ROWS = 256  # rows of the local query expansion gathered at once


@dataclass(frozen=True)
class RerankSettings:
    """k1 (reciprocal neighbourhood), k2 (query expansion), lam (weight of the original
    distance); the paper's defaults 20 / 6 / 0.3."""

    k1: int = 20
    k2: int = 6
    lam: float = 0.3

    def __post_init__(self) -> None:
        if self.k1 < 1 or self.k2 < 1:
            raise ValueError(f"eval.rerank: k1 and k2 must be >= 1, got {self.k1}, {self.k2}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"eval.rerank.lam must be in [0, 1], got {self.lam}")

    @classmethod
    def from_config(cls, eval_cfg: DictConfig) -> RerankSettings | None:
        """The settings of ``eval.rerank``, or None when it is off (or absent)."""
        rerank = eval_cfg.get("rerank")
        if rerank is None or not bool(rerank.get("enabled", False)):
            return None
        return cls(k1=int(rerank.k1), k2=int(rerank.k2), lam=float(rerank.lam))


def _reciprocal_sets(ranked: Tensor, k: int) -> list[Tensor]:
    """R(i, k) for every i: the entries of N(i, k) whose own N(., k) holds i."""
    n = ranked.shape[0]
    near = ranked[:, : k + 1]
    member = torch.zeros(n, n, dtype=torch.bool)
    member.scatter_(1, near, True)  # member[j, i]: i in N(j, k)
    # j in N(i, k) is reciprocal when member[j, i]
    keep = member[near, torch.arange(n).unsqueeze(1).expand_as(near)]
    return [near[i][keep[i]] for i in range(n)]


def reciprocal_weights(dist: Tensor, settings: RerankSettings) -> Tensor:
    """(N, N) row-scaled distances -> (N, N) weights V (rows sum to 1), query-expanded."""
    n = dist.shape[0]
    ranked = torch.argsort(dist, dim=1, stable=True)
    k1 = min(settings.k1, n - 1)
    sets = _reciprocal_sets(ranked, k1)
    halves = _reciprocal_sets(ranked, min(round(k1 / 2), n - 1))
    weights = torch.zeros(n, n, dtype=dist.dtype)
    for i in range(n):
        own = sets[i]
        grown = [own]
        own_set = set(own.tolist())
        for j in own.tolist():
            candidate = halves[j]
            shared = sum(1 for c in candidate.tolist() if c in own_set)
            if shared > 2.0 / 3.0 * len(candidate):
                grown.append(candidate)
        members = torch.unique(torch.cat(grown))
        w = torch.exp(-dist[i, members])
        weights[i, members] = w / w.sum()
    if settings.k2 > 1:
        near = ranked[:, : min(settings.k2, n)]
        expanded = torch.empty_like(weights)
        # In blocks of rows: the gathered (rows, k2, N) neighbours of all N at once would take
        # k2 times the weights' memory.
        for start in range(0, n, EXPANSION_ROWS):
            block = near[start : start + EXPANSION_ROWS]
            expanded[start : start + EXPANSION_ROWS] = weights[block].mean(dim=1)
        weights = expanded
    return weights


def jaccard_distance(weights: Tensor, query: Tensor, gallery: Tensor) -> Tensor:
    """(Q, G) 1 - sum min / sum max of the weight rows `query` against the rows `gallery`.

    Only the query row's non-zero columns can add to the sum of minima; the sum of maxima is
    the two rows' total mass minus the sum of minima.
    """
    mass = weights.sum(dim=1)
    g_rows = weights[gallery]
    out = torch.empty(len(query), len(gallery), dtype=weights.dtype)
    for row, q in enumerate(query.tolist()):
        cols = torch.nonzero(weights[q]).squeeze(1)
        minima = torch.minimum(weights[q, cols].unsqueeze(0), g_rows[:, cols]).sum(dim=1)
        maxima = mass[q] + mass[gallery] - minima
        out[row] = 1.0 - minima / maxima.clamp_min(torch.finfo(weights.dtype).tiny)
    return out


def rerank_distance(
    query: Tensor, gallery: Tensor, settings: RerankSettings, metric: str = "cosine"
) -> Tensor:
    """(Q, D) x (G, D) features -> (Q, G) re-ranked distances (on the CPU, float64)."""
    feats = torch.cat([torch.as_tensor(query), torch.as_tensor(gallery)]).detach().cpu().double()
    return rerank_from_distances(pairwise_distance(feats, feats, metric), len(query), settings)


def rerank_from_distances(dist: Tensor, num_query: int, settings: RerankSettings) -> Tensor:
    """(N, N) distances of the queries (first `num_query` rows) and the gallery (the rest)
    -> (Q, G) re-ranked distances."""
    dist = dist.double().clamp_min(0.0)
    scaled = dist / dist.max(dim=1, keepdim=True).values.clamp_min(torch.finfo(dist.dtype).tiny)
    weights = reciprocal_weights(scaled, settings)
    n = dist.shape[0]
    query = torch.arange(num_query)
    gallery = torch.arange(num_query, n)
    jaccard = jaccard_distance(weights, query, gallery)
    original = scaled[:num_query, num_query:]
    return (1.0 - settings.lam) * jaccard + settings.lam * original
