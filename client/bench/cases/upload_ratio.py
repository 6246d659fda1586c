"""4. ``upload_ratio``: bytes a site uploads per round (history.json ``bytes_received``) vs the
full fp32 model, fp32 and half-precision transport, with both runs' central mAP and the
run-to-run noise of reseeded fp32 runs."""

from __future__ import annotations

import logging
import math
import statistics
from typing import Any

from omegaconf import DictConfig

from client.bench.cases.federation_overhead import federation_overrides, fp32_simulation
from client.bench.context import BenchContext, load_average, read_json
from client.bench.report import row
from client.bench.simulations import (
    SimulationRun,
    run_simulation,
)
from ppa.config import load_config
from ppa.model import create_model
from ppa.wire import global_keys

logger = logging.getLogger("bench")


def full_model_bytes(cfg: DictConfig) -> int:
    """Bytes of the whole global model in fp32: every travelling entry, both stems."""
    from ppa.data.protocols import load_label_space

    model = create_model(cfg.model, len(load_label_space(cfg.dataset)))
    state = model.state_dict()
    return sum(state[k].numel() * 4 for k in global_keys(state) if state[k].is_floating_point())


def upload_per_site(run: SimulationRun) -> float:
    """Median over rounds of bytes received / sites replied."""
    per_round = [r["bytes_received"] / len(r["replied"]) for r in run.rounds if r.get("replied")]
    return statistics.median(per_round)


def central_numbers(run: SimulationRun) -> dict[str, Any]:
    """The last central evaluation: mAP per privacy protocol and the standard error over the
    test trials of the headline group (the gallery-sampling noise)."""
    last = [r for r in run.rounds if r.get("central")][-1]
    report = read_json(run.output_dir / "evaluation" / f"round_{last['round']:04d}.json")
    out: dict[str, Any] = {"round": last["round"]}
    for protocol, numbers in last["central"].items():
        entry = {"mAP": numbers["mAP"], "rank1": numbers["rank1"]}
        groups = report.get("results", {}).get(protocol, {})
        if groups:
            trials = next(iter(groups.values()))["trials"]
            maps = [t["mAP"] for t in trials]
            if len(maps) > 1:
                entry["mAP_standard_error"] = statistics.stdev(maps) / math.sqrt(len(maps))
        out[protocol] = entry
    return out


def bench_upload_ratio(ctx: BenchContext) -> dict[str, Any]:
    settings = ctx.bench.upload_ratio
    target = float(settings.target)
    fp32 = fp32_simulation(ctx)
    experiment, overrides = federation_overrides(ctx)
    half = run_simulation(
        ctx,
        "federation-fp16",
        experiment,
        [*overrides, *settings.overrides],
        timeout=float(ctx.bench.federation_overhead.timeout),
        sample_interval=float(ctx.bench.federation_overhead.sample_interval),
    )
    half.check()
    cfg = load_config([f"experiment={experiment}", *overrides])
    model_bytes = full_model_bytes(cfg)
    bytes32, bytes16 = upload_per_site(fp32), upload_per_site(half)
    map32, map16 = central_numbers(fp32), central_numbers(half)
    # Run-to-run noise: the fp32 run again with other seeds (the fp16 transport is one more
    # perturbation of the training trajectory; it must not cost more than a reseed does).
    reseeded = []
    for seed in settings.noise_seeds:
        again = run_simulation(
            ctx,
            f"federation-fp32-seed{int(seed)}",
            experiment,
            [*overrides, f"seed={int(seed)}"],
            timeout=float(ctx.bench.federation_overhead.timeout),
            sample_interval=float(ctx.bench.federation_overhead.sample_interval),
        )
        again.check()
        reseeded.append({"seed": int(seed), "central": central_numbers(again)})
    r32, r16 = bytes32 / model_bytes, bytes16 / model_bytes
    result: dict[str, Any] = {
        "full_model_fp32_bytes": model_bytes,
        "fp32": {"bytes_per_site_round": bytes32, "ratio": r32, "central": map32},
        "half_precision": {"bytes_per_site_round": bytes16, "ratio": r16, "central": map16},
        "fp32_reseeded": reseeded,
        "load": load_average(),
        "rows": [],
    }
    result["rows"].append(
        row(
            "upload per site-round / full fp32 model, half precision",
            r16,
            target=f"<= {target}",
            met=r16 <= target,
            note=(
                f"{bytes16 / 1e6:.2f} MB vs {model_bytes / 1e6:.2f} MB; fp32 transport "
                f"{r32:.3f} ({bytes32 / 1e6:.2f} MB: one stem, shared parts, prototypes)"
            ),
        )
    )
    for protocol in [p for p in map32 if p != "round"]:
        a, b = map32[protocol], map16.get(protocol, {})
        if "mAP" not in b:
            continue
        delta = b["mAP"] - a["mAP"]
        seed_deltas = [
            abs(r["central"][protocol]["mAP"] - a["mAP"])
            for r in reseeded
            if protocol in r["central"]
        ]
        noise = max(seed_deltas) if seed_deltas else None
        met = None if noise is None else delta >= -max(noise, a.get("mAP_standard_error", 0.0))
        noise_text = (
            f"a reseeded fp32 run differs by {100 * noise:.2f} pt"
            if noise is not None
            else "no reseeded run"
        )
        result["rows"].append(
            row(
                f"central mAP, half precision - fp32 ({protocol})",
                100 * delta,
                unit="pt",
                target="no loss beyond noise",
                met=met,
                note=(
                    f"fp32 {100 * a['mAP']:.2f} %, fp16 {100 * b['mAP']:.2f} % after round "
                    f"{map32['round']}; {noise_text}"
                    + (
                        f"; standard error over the test trials "
                        f"{100 * a['mAP_standard_error']:.2f} pt"
                        if "mAP_standard_error" in a
                        else ""
                    )
                ),
            )
        )
    return result
