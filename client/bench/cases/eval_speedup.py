"""3. ``eval_speedup``: ppa.eval.metrics vs ppa.eval.reference (SYSU and RegDB) on a SYSU-sized
distance matrix, numbers asserted identical."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from client.bench.context import BenchContext, load_average
from client.bench.report import row
from client.bench.timing import Samples, ratio, time_call
from ppa.eval import metrics
from ppa.eval import reference as metrics_reference

logger = logging.getLogger("bench")


def sysu_like_problem(settings: DictConfig, seed: int) -> dict[str, Any]:
    """Distances between SYSU-shaped queries (IR cams 3/6) and gallery (visible cams 1/2/4/5):
    features around per-identity centres, cosine distances in float32 as evaluation makes."""
    rng = np.random.default_rng(seed)
    num_q, num_g, num_ids = (
        int(settings.num_query),
        int(settings.num_gallery),
        int(settings.num_ids),
    )
    ids = np.arange(1, num_ids + 1)
    q_pids = rng.choice(ids, num_q)
    g_pids = np.concatenate([ids, rng.choice(ids, num_g - num_ids)])[:num_g]  # every id present
    rng.shuffle(g_pids)
    centres = rng.normal(size=(num_ids + 1, int(settings.feature_dim))).astype(np.float32)
    noise = float(settings.noise)
    q_feats = centres[q_pids] + noise * rng.normal(size=(num_q, centres.shape[1]))
    g_feats = centres[g_pids] + noise * rng.normal(size=(num_g, centres.shape[1]))
    dist = metrics.pairwise_distance(
        torch.from_numpy(q_feats.astype(np.float32)), torch.from_numpy(g_feats.astype(np.float32))
    )
    return {
        "dist": dist,
        "q_pids": q_pids,
        "g_pids": g_pids,
        "q_cams": rng.choice([3, 6], num_q),
        "g_cams": rng.choice([1, 2, 4, 5], num_g),
    }


def assert_same_metrics(fast: Mapping[str, Any], slow: Mapping[str, Any], what: str) -> float:
    """Raise unless the two results agree (CMC exactly, mAP/mINP to float64 rounding); returns
    the largest difference."""
    if not np.array_equal(np.asarray(fast["cmc"]), np.asarray(slow["cmc"])):
        raise AssertionError(f"{what}: the CMC curves differ")
    diff = max(abs(fast["mAP"] - slow["mAP"]), abs(fast["mINP"] - slow["mINP"]))
    if diff > 1e-12:
        raise AssertionError(f"{what}: mAP/mINP differ by {diff:.3g}")
    return diff


def bench_eval_speedup(ctx: BenchContext) -> dict[str, Any]:
    settings = ctx.bench.eval_speedup
    problem = sysu_like_problem(settings, int(ctx.bench.seed))
    dist, q_pids, g_pids = problem["dist"], problem["q_pids"], problem["g_pids"]
    q_cams, g_cams = problem["q_cams"], problem["g_cams"]
    dist_np = dist.numpy()
    target = float(settings.target)
    out: dict[str, Any] = {"shape": list(dist.shape), "rows": []}
    protocols = {
        "sysu": (
            lambda: metrics.sysu_metrics(dist, q_pids, g_pids, q_cams, g_cams),
            lambda: metrics_reference.sysu_metrics(dist_np, q_pids, g_pids, q_cams, g_cams),
            lambda: _sort_path(dist, q_pids, g_pids, q_cams, g_cams),
        ),
        "regdb": (
            lambda: metrics.regdb_metrics(dist, q_pids, g_pids),
            lambda: metrics_reference.regdb_metrics(dist_np, q_pids, g_pids),
            lambda: _sort_path(dist, q_pids, g_pids, None, None),
        ),
    }
    repeats, ref_repeats = int(settings.repeats), int(settings.reference_repeats)
    for name, (fast, slow, before) in protocols.items():
        logger.info("eval_speedup: %s, %d x %d", name, *dist.shape)
        # The reference is slow: it gets fewer repeats, each interleaved with a few fast runs;
        # every call's result is kept and checked, so the check costs no extra run.
        timings = {"vectorised": Samples(), "reference": Samples(), "sort_path": Samples()}
        outputs: dict[str, list[dict]] = {k: [] for k in timings}
        per_round = max(1, math.ceil(repeats / ref_repeats))
        for _ in tqdm(range(ref_repeats), desc=f"eval {name}", leave=False):
            calls = [("reference", slow), ("sort_path", before)] + [("vectorised", fast)] * (
                per_round
            )
            for label, fn in calls:
                wall, cpu, result = time_call(fn)
                timings[label].wall.append(wall)
                timings[label].cpu.append(cpu)
                outputs[label].append(result)
        slow_result = outputs["reference"][0]
        diff = max(
            assert_same_metrics(r, slow_result, f"{name} vectorised vs reference")
            for r in outputs["vectorised"]
        )
        for r in outputs["sort_path"]:
            assert_same_metrics(r, slow_result, f"{name} sort path vs reference")
        fast_result = outputs["vectorised"][0]
        speedup = ratio(timings["reference"].median_wall, timings["vectorised"].median_wall)
        speedup_cpu = ratio(timings["reference"].median_cpu, timings["vectorised"].median_cpu)
        before_speedup = ratio(timings["reference"].median_wall, timings["sort_path"].median_wall)
        out[name] = {
            "timings": {k: v.summary() for k, v in timings.items()},
            "speedup_wall": speedup,
            "speedup_cpu": speedup_cpu,
            "speedup_before_fast_path_wall": before_speedup,
            "max_abs_difference": diff,
            "mAP": fast_result["mAP"],
            "rank1": float(fast_result["cmc"][0]),
            "load": load_average(),
        }
        out["rows"].append(
            row(
                f"{name.upper()} metrics speed-up vs per-query loop",
                speedup,
                unit="x",
                target=f">= {target:g}x",
                met=speedup >= target,
                note=(
                    f"{timings['vectorised'].median_wall * 1e3:.0f} ms vs "
                    f"{timings['reference'].median_wall:.2f} s; CPU-time {speedup_cpu:.1f}x; "
                    f"before the key-sort path {before_speedup:.1f}x; identical numbers"
                ),
            )
        )
    return out


def _sort_path(dist: torch.Tensor, q_pids: Any, g_pids: Any, q_cams: Any, g_cams: Any) -> dict:
    """The metrics through the stable-argsort path (the implementation before the key-sort
    fast path; still what GPU and float64 distances take)."""
    dist_t, q_pid_t, g_pid_t = metrics._prepare(dist, q_pids, g_pids, 20)
    keep = None
    if q_cams is not None:
        query_cam, gallery_cam = metrics.SYSU_REMOVED_PAIR
        keep = ~(
            (torch.as_tensor(np.asarray(q_cams)) == query_cam)[:, None]
            & (torch.as_tensor(np.asarray(g_cams)) == gallery_cam)[None, :]
        )
    return metrics._evaluate_by_sort(
        dist_t, q_pid_t, g_pid_t, keep, dedup=q_cams is not None, max_rank=20
    )
