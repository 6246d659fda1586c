"""Per-query reference implementation of the SYSU-MM01 and RegDB metrics.

Written for reading, not speed: one query at a time, the definitions spelled out (see
`ppa.eval.metrics` for the conventions). Tests check the vectorised `ppa.eval.metrics` against
it, and the benchmark times the two.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ppa.eval.metrics import SYSU_REMOVED_PAIR


def sysu_metrics(
    dist: Any, q_pids: Any, g_pids: Any, q_cams: Any, g_cams: Any, max_rank: int = 20
) -> dict[str, Any]:
    """SYSU-MM01 protocol, one query at a time."""
    dist = np.asarray(dist, dtype=np.float64)
    q_cams, g_cams = np.asarray(q_cams), np.asarray(g_cams)
    query_cam, gallery_cam = SYSU_REMOVED_PAIR

    def kept(q: int, order: np.ndarray) -> np.ndarray:
        if q_cams[q] == query_cam:
            return order[g_cams[order] != gallery_cam]
        return order

    return _per_query(dist, q_pids, g_pids, kept, distinct_identities=True, max_rank=max_rank)


def regdb_metrics(dist: Any, q_pids: Any, g_pids: Any, max_rank: int = 20) -> dict[str, Any]:
    """RegDB protocol, one query at a time."""
    dist = np.asarray(dist, dtype=np.float64)
    return _per_query(
        dist, q_pids, g_pids, lambda q, order: order, distinct_identities=False, max_rank=max_rank
    )


def _per_query(dist, q_pids, g_pids, kept, *, distinct_identities, max_rank):
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    num_q, num_g = dist.shape
    curve_length = min(max_rank, num_g)
    cmc_sum = np.zeros(curve_length)
    aps, inps = [], []
    for q in range(num_q):
        order = np.argsort(dist[q], kind="stable")  # ties keep gallery order
        ranked = g_pids[kept(q, order)]
        correct = ranked == q_pids[q]
        if not correct.any():
            continue  # no match: left out of every average

        if distinct_identities:
            # Each identity counted once, at its first position in the ranked list.
            distinct: list[int] = []
            for pid in ranked:
                if pid not in distinct:
                    distinct.append(pid)
            first_rank = distinct.index(q_pids[q]) + 1
        else:
            first_rank = int(np.flatnonzero(correct)[0]) + 1
        for k in range(1, curve_length + 1):
            if first_rank <= k:
                cmc_sum[k - 1] += 1

        positions = np.flatnonzero(correct) + 1  # 1-based positions of the correct matches
        precisions = [(i + 1) / position for i, position in enumerate(positions)]
        aps.append(sum(precisions) / len(positions))
        inps.append(len(positions) / positions[-1])

    if not aps:
        raise ValueError("no query has a correct match in the gallery")
    return {"cmc": cmc_sum / len(aps), "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps))}
