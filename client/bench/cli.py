"""``ppa-bench``: the performance benchmark, eight measurements in one command, as ratios taken
side by side in one run (medians over interleaved repeats), with the machine and its load.

    ppa-bench                       # all eight (~20 min on 2 CPU cores)
    ppa-bench --quick               # small sizes (~3 min)
    ppa-bench --only eval_speedup,ppa_step_ratio
    ppa-bench bench.eval_speedup.repeats=9   # config overrides

Settings: configs/bench/default.yaml. Writes ``<bench.output_dir>/bench.json`` (results of
every benchmark ever run there, each with its own time, load and machine; a run replaces the
entries of the benchmarks it ran) and ``bench.md`` (the table), and rewrites the results
section of docs/benchmarks.md between its ``bench:begin`` / ``bench:end`` markers.

Timings are wall-clock medians; CPU-time (process_time, all threads) medians go alongside
because the machine is shared: a ratio of CPU times is robust to other processes' load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tqdm.auto import tqdm

from client.bench.cases import BENCHMARKS, RUNNERS
from client.bench.context import (
    BenchContext,
    anchored,
    load_average,
    load_bench_config,
    machine_info,
    read_json,
)
from client.bench.report import merge_results, render_markdown, row, update_docs

logger = logging.getLogger("bench")


def parse_only(value: str | None) -> list[str]:
    """`--only a,b` -> the named benchmarks in the canonical order (all when empty)."""
    if not value:
        return list(BENCHMARKS)
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    return [n for n in BENCHMARKS if n in names]


def run_benchmarks(
    ctx: BenchContext,
    names: Iterable[str],
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the named benchmarks; a failing one is recorded with its error, the rest go on.
    `on_result(name, entry)` is called after each (the driver saves as it goes)."""
    results: dict[str, Any] = {}
    names = list(names)
    for name in tqdm(names, desc="benchmarks"):
        logger.info("=== %s (load %s)", name, load_average())
        started = time.perf_counter()
        entry: dict[str, Any] = {
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "quick": ctx.quick,
            "load_before": load_average(),
        }
        try:
            entry.update(RUNNERS[name](ctx))
        except Exception as err:  # a benchmark's failure is a result too
            logger.exception("%s failed", name)
            entry["error"] = f"{type(err).__name__}: {err}"
            entry["rows"] = [row(name, None, note=f"failed: {entry['error']}")]
        entry["seconds"] = time.perf_counter() - started
        entry["load_after"] = load_average()
        results[name] = entry
        logger.info("=== %s done in %.0f s", name, entry["seconds"])
        if on_result is not None:
            on_result(name, entry)
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes (configs/bench/default.yaml `quick:`), ~3 minutes",
    )
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. bench.eval_speedup.repeats=9",
    )
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        names = parse_only(args.only)
    except ValueError as err:
        logger.error("%s", err)
        return 2
    cfg = load_bench_config(args.overrides, quick=args.quick)
    ctx = BenchContext(
        cfg=cfg,
        quick=args.quick,
        output_dir=anchored(cfg.bench.output_dir),
        work_dir=anchored(cfg.bench.work_dir),
    )
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    logger.info("machine: %s", machine)
    command = " ".join(["ppa-bench", *(argv if argv is not None else sys.argv[1:])])
    json_path = ctx.output_dir / "bench.json"

    def save(name: str, entry: dict[str, Any]) -> dict[str, Any]:
        # After every benchmark: an interrupted run keeps what it measured.
        data = merge_results(json_path, machine, command, {name: entry}, BENCHMARKS)
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, json_path)
        return data

    results = run_benchmarks(ctx, names, on_result=save)
    data = read_json(json_path)
    table = render_markdown(data)
    (ctx.output_dir / "bench.md").write_text(table)
    if not args.no_docs:
        update_docs(anchored(cfg.bench.docs), table)
    print(table)
    logger.info("results: %s", json_path)
    return 1 if any("error" in results[n] for n in results) else 0


if __name__ == "__main__":
    sys.exit(main())
