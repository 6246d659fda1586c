"""5. ``sites_scaling``: simulations of 6, 24 and 96 sites: wall time per round and the peak
memory of the whole process tree (sum of RSS, and of PSS, sampled from /proc)."""

from __future__ import annotations

import logging
from typing import Any

from client.bench.context import BenchContext, load_average
from client.bench.report import row
from client.bench.simulations import (
    ACTOR_PROCESS,
    concurrent_sites,
    dataset_params,
    run_simulation,
    synthetic_root,
)
from client.bench.timing import ratio
from ppa.config import load_config

logger = logging.getLogger("bench")


def bench_sites_scaling(ctx: BenchContext) -> dict[str, Any]:
    settings = ctx.bench.sites_scaling
    params = dataset_params(ctx.bench.dataset, settings.dataset)
    root = synthetic_root(ctx, params)
    runs = []
    for per_modality in settings.sites_per_modality:
        sites = 2 * int(per_modality)
        overrides = [
            f"dataset.root={root}",
            f"federation.rounds={int(settings.rounds)}",
            f"federation.sites_per_modality={int(per_modality)}",
            *settings.overrides,
        ]
        run = run_simulation(
            ctx,
            f"sites-{sites}",
            "demo",
            overrides,
            timeout=float(settings.timeout),
            sample_interval=float(settings.sample_interval),
        )
        cfg = load_config(["experiment=demo", *overrides])
        entry: dict[str, Any] = {
            "sites": sites,
            "concurrent_sites": concurrent_sites(cfg, sites),
            "ray_processes": run.ray_processes,
            "exit": run.returncode,
            "status": run.summary.get("status"),
            "wall_s": run.wall_s,
            "round_seconds": {str(r["round"]): r.get("seconds") for r in run.rounds},
            "peak_rss_mib": run.peak_rss / 2**20,
            "peak_pss_mib": run.peak_pss / 2**20,
            "peak_processes": run.peak_processes,
            "peak_rss_mib_by_process": {
                k: round(v / 2**20, 1) for k, v in run.peak_rss_by_name.items()
            },
            "actor_peak_rss_mib": run.peak_rss_by_name.get(ACTOR_PROCESS, 0) / 2**20,
            "memory_series": run.memory_series[:: max(1, len(run.memory_series) // 200)],
            "log": str(run.log),
            "load": load_average(),
        }
        runs.append(entry)
        if run.returncode != 0:
            logger.warning(
                "sites_scaling: %d sites ended with exit %d (%s); see %s",
                sites,
                run.returncode,
                entry["status"],
                run.log,
            )
    ok = [r for r in runs if r["exit"] == 0]
    rows = []
    for r in runs:
        rounds = r["round_seconds"]
        steady = rounds.get(str(int(settings.rounds)))
        rows.append(
            row(
                f"{r['sites']} sites: peak memory of the process tree",
                r["peak_pss_mib"],
                unit="MiB PSS",
                note=(
                    f"RSS sum {r['peak_rss_mib']:.0f} MiB, of which the site actors "
                    f"{r['actor_peak_rss_mib']:.0f} MiB "
                    f"({r['ray_processes'].get(ACTOR_PROCESS, 0)} actors); round 1 "
                    f"{rounds.get('1') or 0:.1f} s"
                    + (f", round {settings.rounds} {steady:.1f} s" if steady else "")
                    + f"; {r['status']}"
                ),
            )
        )
    growth = None
    if len(ok) >= 2:
        first, last = ok[0], ok[-1]
        growth = ratio(last["peak_pss_mib"], first["peak_pss_mib"])
        rows.append(
            row(
                f"peak memory {last['sites']} / {first['sites']} sites",
                growth,
                unit="x",
                target="~1 (grows with concurrent sites, not total)",
                met=growth <= 1.5,
                note=f"{last['sites'] / first['sites']:.0f}x the sites, same concurrency",
            )
        )
    return {"runs": runs, "memory_growth": growth, "rows": rows}
