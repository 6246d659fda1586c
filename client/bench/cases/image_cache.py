"""8. ``image_cache``: one demo site's training round (`client.site.SiteTrainer.train_round`,
one local epoch) without the decoded-image cache (``train.image_cache_mb=0``) against the same
round with it, interleaved, one-thread CPU time, after a round that fills the cache; plus
whether the two trainers' replies to the same round are identical (the cache may change the
speed, never the numbers)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from client.bench.context import BenchContext, load_average
from client.bench.report import row
from client.bench.simulations import dataset_params, synthetic_root
from client.bench.timing import interleaved, ratio, torch_threads
from client.site import RoundResult, SiteTrainer
from ppa.config import load_config
from ppa.node_config import SiteSpec
from ppa.wire import global_keys, pack

logger = logging.getLogger("bench")

CANDIDATES = ("no cache", "cache")


def bench_image_cache(ctx: BenchContext) -> dict[str, Any]:
    settings = ctx.bench.image_cache
    result = image_cache_case(ctx)
    identical = result["identical_replies"]
    return {
        **result,
        "rows": [
            row(
                f"site round CPU time, no cache / cache, {result['site']}",
                result["speedup"],
                unit="x",
                note=(
                    f"one-thread CPU time, median of {int(settings.repeats)} interleaved "
                    f"rounds of {result['examples']} images after one that fills the cache; "
                    f"{result['median_s']['no cache']:.2f} vs "
                    f"{result['median_s']['cache']:.2f} s; {result['cached_images']} images, "
                    f"{result['cached_bytes'] / 2**20:.1f} MiB cached"
                ),
            ),
            row(
                "replies of one round, with and without the cache",
                None,
                target="identical",
                met=identical,
                note=(
                    "every array and prototype sum bit for bit"
                    if identical
                    else f"differ: {', '.join(result['differing'][:5])}"
                ),
            ),
        ],
    }


def image_cache_case(ctx: BenchContext) -> dict[str, Any]:
    """Two trainers of one site, identical but for the cache, each given the same rounds in
    turn (the same round numbers, so the same batches) from the same global arrays."""
    settings = ctx.bench.image_cache
    root = synthetic_root(ctx, dataset_params(ctx.bench.dataset))
    budgets = {"no cache": 0, "cache": float(settings.cache_mb)}
    trainers = {}
    for name, megabytes in budgets.items():
        cfg = load_config(
            [
                f"experiment={settings.experiment}",
                f"dataset.root={root}",
                f"train.image_cache_mb={megabytes}",
                *settings.overrides,
            ]
        )
        spec = SiteSpec(None, None, None, int(settings.partition_id), int(settings.sites))
        trainers[name] = SiteTrainer(cfg, spec)
    state = trainers["no cache"].model.state_dict()
    start = {k: v.copy() for k, v in pack(state, global_keys(state)).items()}
    replies: dict[str, list[RoundResult]] = {name: [] for name in CANDIDATES}

    def one_round(name: str) -> Callable[[], None]:
        def run() -> None:
            reply = trainers[name].train_round(
                start,
                None,
                server_round=len(replies[name]) + 1,
                local_epochs=1,
                half_precision=False,
            )
            replies[name].append(reply)

        return run

    site = trainers["cache"].site.name
    logger.info("image_cache: site %s, %d interleaved rounds", site, int(settings.repeats))
    with torch_threads(1):
        timed = interleaved(
            {name: one_round(name) for name in CANDIDATES},
            int(settings.repeats),
            warmup=1,
            desc="image cache",
            cpu_clock=time.thread_time,
        )
    median = {name: samples.median_cpu for name, samples in timed.items()}
    differing = replies_differ(replies["no cache"][-1], replies["cache"][-1])
    cache = trainers["cache"].setup.image_cache
    return {
        "site": site,
        "examples": int(replies["cache"][-1].metrics["examples-seen"]),
        "clock": "thread_time",
        "samples": {name: samples.summary() for name, samples in timed.items()},
        "median_s": median,
        "speedup": ratio(median["no cache"], median["cache"]),
        "cached_images": 0 if cache is None else len(cache),
        "cached_bytes": 0 if cache is None else cache.bytes,
        "identical_replies": not differing,
        "differing": differing,
        "load": load_average(),
    }


def replies_differ(a: RoundResult, b: RoundResult) -> list[str]:
    """The names of the arrays (and prototype sums/counts) in which two replies differ."""
    out = [
        key
        for key in sorted(set(a.arrays) | set(b.arrays))
        if key not in a.arrays
        or key not in b.arrays
        or not np.array_equal(a.arrays[key], b.arrays[key])
    ]
    if not np.array_equal(a.proto_sum, b.proto_sum):
        out.append("proto_sum")
    if not np.array_equal(a.proto_count, b.proto_count):
        out.append("proto_count")
    return out
