"""Retrieval metrics of the SYSU-MM01 and RegDB protocols: CMC (Rank-k), mAP and mINP.

Vectorised over the whole distance matrix with torch (processed in blocks of query rows to
bound memory), on the device the distances live on. `ppa.eval.reference` is the readable
per-query implementation of the same definitions; the two agree to floating-point precision.

Conventions shared by both protocols:

- The gallery is ranked by ascending distance with a STABLE sort: tied distances keep the
  gallery's own order (the earlier gallery entry ranks first).
- A query "has a match" when a gallery entry (kept after any removal) shares its identity.
  Queries without a match are left out of every average, CMC included.
- AP = mean over the correct matches of precision at their positions; INP = number of correct
  matches / position of the hardest (last) correct match; positions are 1-based.
- The CMC has min(max_rank, gallery size) entries, each in [0, 1].

SYSU-MM01 (as the literature's reference evaluation code): a query from camera 3 ignores every
gallery image from camera 2, and the CMC counts each gallery identity once, at its first
position in the ranked (kept) list, so Rank-k is "the true identity is among the first k
distinct identities". RegDB: plain CMC (first correct match within the first k images), no
removal.

Two evaluation paths give the same numbers. CPU float32 (or narrower) distances, what
`pairwise_distance` returns for float32 features, take `_evaluate_by_keys`: each entry becomes
one 64-bit integer key, order-preserving bits of the distance above the gallery index, so one
plain (SIMD-vectorised) numpy value sort per row gives the stable ranking, and everything after
the sort touches only the correct matches. Other inputs (GPU tensors, float64) take
`_evaluate_by_sort`, a stable torch argsort.

One concept kept whole (a little over 400 lines): the two paths implement the same
definitions and are checked against each other and against `ppa.eval.reference`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

# SYSU-MM01: queries from this camera ignore gallery images from that camera (cameras 2 and 3
# are at the same indoor location).
SYSU_REMOVED_PAIR: tuple[int, int] = (3, 2)
METRICS: tuple[str, ...] = ("cosine", "euclidean")
# Query rows per block: bounds the (rows x gallery) temporaries to tens of MB at 3000 gallery
# images while keeping each torch op large enough to run at full speed.
ROWS_PER_BLOCK = 1024
_SIGN_BIT = 0x80000000
# A sort key holds 32 bits of float32 distance and the column index below them.
_KEY_INDEX_BITS_MAX = 32
_NARROW_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# Key bits of a gallery entry a query must not see: above every finite (or infinite) distance.
_REMOVED_BITS = np.uint32(0xFFFFFFFF)
# The SYSU identity rank is first read in this many leading ranked entries (at least
# 2 x max_rank); the few queries whose own identity first appears later get a wider window.
_IDENTITY_WINDOW = 32


def pairwise_distance(
    query_feats: Tensor | np.ndarray,
    gallery_feats: Tensor | np.ndarray,
    metric: str = "cosine",
    batch_size: int = ROWS_PER_BLOCK,
) -> Tensor:
    """(Q, D) x (G, D) features -> (Q, G) distances, on the query features' device.

    ``cosine``: 1 - cosine similarity of the L2-normalised features (in [0, 2]);
    ``euclidean``: L2 distance. Computed `batch_size` query rows at a time.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    query = torch.as_tensor(query_feats)
    gallery = torch.as_tensor(gallery_feats, device=query.device)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"features must be (Q, D) and (G, D), got {tuple(query.shape)} and "
            f"{tuple(gallery.shape)}"
        )
    dtype = torch.promote_types(query.dtype, gallery.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    query, gallery = query.to(dtype), gallery.to(dtype)
    if metric == "cosine":
        query = torch.nn.functional.normalize(query, dim=1)
        gallery = torch.nn.functional.normalize(gallery, dim=1)
    else:
        gallery_sq = gallery.pow(2).sum(1)
    out = torch.empty((query.shape[0], gallery.shape[0]), dtype=dtype, device=query.device)
    for start in range(0, query.shape[0], batch_size):
        block = query[start : start + batch_size]
        product = block @ gallery.T
        if metric == "cosine":
            out[start : start + batch_size] = 1.0 - product
        else:
            sq = block.pow(2).sum(1, keepdim=True) + gallery_sq[None, :] - 2.0 * product
            out[start : start + batch_size] = sq.clamp_min_(0.0).sqrt_()
    return out


def sysu_metrics(
    dist: Tensor | np.ndarray,
    q_pids: Any,
    g_pids: Any,
    q_cams: Any,
    g_cams: Any,
    max_rank: int = 20,
) -> dict[str, Any]:
    """SYSU-MM01 protocol: {"cmc": (min(max_rank, G),) array, "mAP": float, "mINP": float}."""
    dist_t, q_pid_t, g_pid_t = _prepare(dist, q_pids, g_pids, max_rank)
    q_cam_t = _ids(q_cams, dist_t.device, dist_t.shape[0], "q_cams")
    g_cam_t = _ids(g_cams, dist_t.device, dist_t.shape[1], "g_cams")
    query_cam, gallery_cam = SYSU_REMOVED_PAIR
    removed = (q_cam_t == query_cam)[:, None] & (g_cam_t == gallery_cam)[None, :]
    return _evaluate(dist_t, q_pid_t, g_pid_t, ~removed, dedup=True, max_rank=max_rank)


def regdb_metrics(
    dist: Tensor | np.ndarray, q_pids: Any, g_pids: Any, max_rank: int = 20
) -> dict[str, Any]:
    """RegDB protocol: {"cmc": (min(max_rank, G),) array, "mAP": float, "mINP": float}."""
    dist_t, q_pid_t, g_pid_t = _prepare(dist, q_pids, g_pids, max_rank)
    return _evaluate(dist_t, q_pid_t, g_pid_t, None, dedup=False, max_rank=max_rank)


def _evaluate(
    dist: Tensor,
    q_pids: Tensor,
    g_pids: Tensor,
    keep: Tensor | None,
    *,
    dedup: bool,
    max_rank: int,
) -> dict[str, Any]:
    """Rank-k / mAP / mINP of the protocol; `keep` (Q, G) marks gallery entries a query sees."""
    index_bits = max(1, (dist.shape[1] - 1).bit_length())
    if dist.device.type == "cpu" and dist.dtype in _NARROW_FLOATS and index_bits < 32:
        return _evaluate_by_keys(dist, q_pids, g_pids, keep, dedup=dedup, max_rank=max_rank)
    return _evaluate_by_sort(dist, q_pids, g_pids, keep, dedup=dedup, max_rank=max_rank)


def _summary(
    ap: Tensor, hardest: Tensor, first_hit: Tensor, num_rel: Tensor, num_g: int, max_rank: int
) -> dict[str, Any]:
    """Average the per-query numbers over the queries that have a match."""
    num_q = num_rel.shape[0]
    valid = num_rel > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            f"no query has a correct match in the gallery ({num_q} queries, "
            f"{num_g} gallery images): check the query/gallery identities"
        )
    cmc_len = min(max_rank, num_g)
    # Histogram of first-hit ranks (clipped past the curve's end), cumulated = CMC.
    counts = torch.bincount(first_hit[valid].clamp(max=cmc_len + 1) - 1, minlength=cmc_len + 1)
    cmc = counts[:cmc_len].cumsum(0).double() / num_valid
    inp = num_rel[valid].double() / hardest[valid].double()
    return {
        "cmc": cmc.cpu().numpy(),
        "mAP": float(ap[valid].mean()),
        "mINP": float(inp.mean()),
    }


def _ordered_bits(dist: np.ndarray) -> np.ndarray:
    """float32 (R, G) -> uint32 whose unsigned order is the float order; -0.0 ties with +0.0."""
    bits = (dist + np.float32(0.0)).view(np.uint32)  # a new array; + 0.0 turns -0.0 into +0.0
    if dist.size and dist.min() < 0:
        # Negatives: flip every bit (larger magnitude -> smaller key).
        bits ^= (bits >> np.uint32(31)) * np.uint32(0x7FFFFFFF)
        bits ^= np.uint32(_SIGN_BIT)
    else:
        bits |= np.uint32(_SIGN_BIT)
    return bits


def _evaluate_by_keys(
    dist: Tensor,
    q_pids: Tensor,
    g_pids: Tensor,
    keep: Tensor | None,
    *,
    dedup: bool,
    max_rank: int,
) -> dict[str, Any]:
    """The protocol on the CPU with one numpy value sort of 64-bit keys per row.

    key = (order-preserving distance bits) << index_bits | gallery index: unique, ordered as the
    stable sort orders the entries, and the index comes back out of the sorted key. Entries a
    query must not see get the largest distance bits, so they sort behind every kept entry and
    a kept entry's position in the kept list is its column in the sorted row. The rest works on
    the (row, column) pairs of the correct matches only.
    """
    num_q, num_g = dist.shape
    index_bits = max(1, (num_g - 1).bit_length())
    index_mask = np.uint64((1 << index_bits) - 1)
    columns = np.arange(num_g, dtype=np.uint64)
    distances = dist.detach().to(torch.float32).numpy()
    identities, g_identity = np.unique(g_pids.numpy(), return_inverse=True)
    g_identity = g_identity.astype(np.int32)
    q_np = q_pids.numpy()
    q_identity = np.searchsorted(identities, q_np).clip(max=len(identities) - 1)
    # A query identity absent from the gallery matches nothing (-1 is no gallery identity).
    q_identity = np.where(identities[q_identity] == q_np, q_identity, -1).astype(np.int32)
    keep_np = None if keep is None else keep.numpy()

    ap = np.zeros(num_q, dtype=np.float64)
    hardest = np.zeros(num_q, dtype=np.int64)
    first_hit = np.full(num_q, num_g + 1, dtype=np.int64)
    num_rel = np.zeros(num_q, dtype=np.int64)
    for start in range(0, num_q, ROWS_PER_BLOCK):
        rows = slice(start, start + ROWS_PER_BLOCK)
        bits = _ordered_bits(distances[rows])
        num_rows = bits.shape[0]
        if keep_np is not None:
            kept = keep_np[rows]
            np.putmask(bits, ~kept, _REMOVED_BITS)
            num_kept = kept.sum(axis=1)
        keys = np.left_shift(bits, np.uint64(index_bits), dtype=np.uint64)
        keys |= columns
        keys.sort(axis=1)
        keys &= index_mask  # the sorted gallery indices
        ranked = np.take(g_identity, keys.view(np.int64))  # identity at each ranked position
        match = ranked == q_identity[rows, None]
        if keep_np is not None:
            match &= columns[None, :] < num_kept[:, None].astype(np.uint64)
        row, col = np.nonzero(match)  # row-major: each row's matches in ranked order
        hits = np.bincount(row, minlength=num_rows)
        first = np.cumsum(hits) - hits  # index of each row's first match in (row, col)
        position = col + 1
        hit_count = np.arange(1, len(row) + 1) - first[row]
        found = hits > 0
        ap[rows] = np.bincount(row, weights=hit_count / position, minlength=num_rows) / np.maximum(
            hits, 1
        )
        block_hardest = np.zeros(num_rows, dtype=np.int64)
        block_hardest[found] = position[(first + hits - 1)[found]]
        hardest[rows] = block_hardest
        own_first = np.full(num_rows, num_g + 1, dtype=np.int64)
        own_first[found] = position[first[found]]
        num_rel[rows] = hits
        first_hit[rows] = (
            _identity_rank(ranked, own_first, found, max_rank, len(identities))
            if dedup
            else own_first
        )

    cmc_len = min(max_rank, num_g)
    valid = num_rel > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            f"no query has a correct match in the gallery ({num_q} queries, "
            f"{num_g} gallery images): check the query/gallery identities"
        )
    counts = np.bincount(np.minimum(first_hit[valid], cmc_len + 1) - 1, minlength=cmc_len + 1)
    return {
        "cmc": np.cumsum(counts[:cmc_len]) / num_valid,
        "mAP": float(ap[valid].mean()),
        "mINP": float((num_rel[valid] / hardest[valid]).mean()),
    }


def _identity_rank(
    ranked: np.ndarray,
    own_first: np.ndarray,
    found: np.ndarray,
    max_rank: int,
    num_identities: int,
) -> np.ndarray:
    """SYSU Rank-k position (R,): distinct identities among a row's ranked entries up to and
    including the first one of the query's identity (1-based position `own_first`); values
    above `max_rank` only need to stay above it.

    Read from a window of leading entries; rows whose identity first appears past the window
    and that saw fewer than `max_rank` identities in it are redone with a window reaching it.
    """
    num_rows, num_g = ranked.shape
    rank = np.full(num_rows, num_g + 1, dtype=np.int64)
    todo = found
    width = min(num_g, max(_IDENTITY_WINDOW, 2 * max_rank))
    while todo.any():
        sub = np.flatnonzero(todo)
        window = ranked[sub, :width]
        # First occurrence of each (row, identity) pair: np.unique's indices are the first.
        pairs = sub[:, None].astype(np.int64) * num_identities + window
        _, first_index = np.unique(pairs.ravel(), return_index=True)
        is_first = np.zeros(window.size, dtype=np.int64)
        is_first[first_index] = 1
        distinct = np.cumsum(is_first.reshape(window.shape), axis=1)
        own = own_first[sub]
        inside = own <= width
        rank[sub[inside]] = distinct[inside, own[inside] - 1]
        # The own identity lies past the window: it ranks after every identity seen there.
        beyond = ~inside & (distinct[:, -1] >= max_rank)
        rank[sub[beyond]] = max_rank + 1
        todo = np.zeros_like(todo)
        todo[sub[~inside & ~beyond]] = True
        width = int(own_first[todo].max()) if todo.any() else width
    return rank


def _evaluate_by_sort(
    dist: Tensor,
    q_pids: Tensor,
    g_pids: Tensor,
    keep: Tensor | None,
    *,
    dedup: bool,
    max_rank: int,
) -> dict[str, Any]:
    num_q, num_g = dist.shape
    device = dist.device
    never = num_g + 1  # a position past the end of every ranked list
    if dedup:
        identities, g_identity = torch.unique(g_pids, return_inverse=True)
        q_identity = torch.searchsorted(identities, q_pids).clamp_(max=len(identities) - 1)
    ap = torch.zeros(num_q, dtype=torch.float64, device=device)
    hardest = torch.zeros(num_q, dtype=torch.int64, device=device)
    first_hit = torch.full((num_q,), never, dtype=torch.int64, device=device)
    num_rel = torch.zeros(num_q, dtype=torch.int64, device=device)
    # Positions fit int32 (a gallery of 2**31 images would not fit in memory anyway); int32
    # cumulative sums run several times faster than int64 ones on the CPU.
    ranks = torch.arange(1, num_g + 1, dtype=torch.int32, device=device)[None, :]

    for start in range(0, num_q, ROWS_PER_BLOCK):
        rows = slice(start, start + ROWS_PER_BLOCK)
        order = stable_argsort(dist[rows])
        match = (g_pids[None, :] == q_pids[rows, None]).gather(1, order)
        if keep is None:
            kept, position = None, ranks.expand_as(match)
        else:
            kept = keep[rows].gather(1, order)
            match &= kept
            # Position of each entry in the list with the removed entries taken out.
            position = kept.cumsum(1, dtype=torch.int32)
        hits = match.sum(1)
        num_rel[rows] = hits
        # AP and INP only need the correct matches: their position and how many precede them.
        row, col = match.nonzero(as_tuple=True)
        hit_position = position[row, col]
        hit_count = match.cumsum(1, dtype=torch.int32)[row, col]
        row_ap = torch.zeros(match.shape[0], dtype=torch.float64, device=device)
        row_ap.index_add_(0, row, hit_count.double() / hit_position.double())
        ap[rows] = row_ap / hits.clamp(min=1)
        row_hardest = torch.zeros(match.shape[0], dtype=torch.int32, device=device)
        hardest[rows] = row_hardest.scatter_reduce_(0, row, hit_position, reduce="amax")
        if dedup:
            # Rank among distinct identities = how many identities first appear (in the kept
            # list) no later than the query's own identity first does.
            kept_position = position if kept is None else torch.where(kept, position, never)
            first = torch.full(
                (match.shape[0], len(identities)), never, dtype=torch.int32, device=device
            )
            ranked_identity = g_identity.expand(match.shape[0], -1).gather(1, order)
            first.scatter_reduce_(1, ranked_identity, kept_position, reduce="amin")
            own_first = first.gather(1, q_identity[rows, None])
            first_hit[rows] = (first <= own_first).sum(1)
        else:
            first_hit[rows] = match.to(torch.uint8).argmax(1) + 1

    return _summary(ap, hardest, first_hit, num_rel, num_g, max_rank)


def stable_argsort(dist: Tensor) -> Tensor:
    """Row-wise argsort of a (Q, G) matrix, ties kept in column order (a stable sort).

    On the CPU with float32 (or narrower) distances, each entry becomes one unique 64-bit key,
    order-preserving bits of the distance above the column index, so numpy's vectorised
    (unstable) value sort gives the stable order several times faster than a stable argsort.
    """
    num_g = dist.shape[1]
    index_bits = max(1, (num_g - 1).bit_length())
    narrow = dist.dtype in (torch.float32, torch.float16, torch.bfloat16)
    if dist.device.type != "cpu" or not narrow or index_bits > _KEY_INDEX_BITS_MAX:
        return torch.argsort(dist, dim=1, stable=True)
    # + 0.0 turns -0.0 into +0.0, which compares equal to it and must tie with it.
    values = dist.to(torch.float32).numpy() + np.float32(0.0)
    bits = values.view(np.uint32)
    # IEEE-754 order as unsigned integers: flip all bits of negatives, the sign bit of others.
    ordered = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(_SIGN_BIT))
    keys = (ordered.astype(np.uint64) << np.uint64(index_bits)) | np.arange(num_g, dtype=np.uint64)
    keys.sort(axis=1)
    return torch.from_numpy((keys & np.uint64((1 << index_bits) - 1)).astype(np.int64))


def _prepare(
    dist: Tensor | np.ndarray, q_pids: Any, g_pids: Any, max_rank: int
) -> tuple[Tensor, Tensor, Tensor]:
    dist_t = torch.as_tensor(dist).detach()
    if dist_t.ndim != 2 or dist_t.shape[0] == 0 or dist_t.shape[1] == 0:
        raise ValueError(f"distance matrix must be non-empty (Q, G), got {tuple(dist_t.shape)}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if not dist_t.is_floating_point():
        dist_t = dist_t.double()
    if torch.isnan(dist_t).any():
        raise ValueError("distance matrix contains NaN")
    q_pid_t = _ids(q_pids, dist_t.device, dist_t.shape[0], "q_pids")
    g_pid_t = _ids(g_pids, dist_t.device, dist_t.shape[1], "g_pids")
    return dist_t, q_pid_t, g_pid_t


def _ids(values: Any, device: torch.device, expected: int, name: str) -> Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, Tensor) else values)
    tensor = tensor.to(device=device, dtype=torch.int64).reshape(-1)
    if tensor.numel() != expected:
        raise ValueError(
            f"{name} has {tensor.numel()} entries, the distance matrix needs {expected}"
        )
    return tensor
