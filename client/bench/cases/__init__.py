"""The eight benchmarks, one module each, in their canonical order (the order of ``--only``,
bench.json and the table). Each takes the `BenchContext` and returns its result: numbers for
bench.json and ``rows`` for the table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from client.bench.cases.amp_speedup import bench_amp_speedup
from client.bench.cases.eval_speedup import bench_eval_speedup
from client.bench.cases.federation_overhead import bench_federation_overhead
from client.bench.cases.image_cache import bench_image_cache
from client.bench.cases.ppa_step_ratio import bench_ppa_step_ratio
from client.bench.cases.sites_scaling import bench_sites_scaling
from client.bench.cases.throughput import bench_throughput
from client.bench.cases.upload_ratio import bench_upload_ratio
from client.bench.context import BenchContext

RUNNERS: dict[str, Callable[[BenchContext], dict[str, Any]]] = {
    "ppa_step_ratio": bench_ppa_step_ratio,
    "federation_overhead": bench_federation_overhead,
    "eval_speedup": bench_eval_speedup,
    "upload_ratio": bench_upload_ratio,
    "sites_scaling": bench_sites_scaling,
    "throughput": bench_throughput,
    "amp_speedup": bench_amp_speedup,
    "image_cache": bench_image_cache,
}
BENCHMARKS = tuple(RUNNERS)
