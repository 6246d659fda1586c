"""2. ``federation_overhead``: seconds per trained sample in a Flower simulation round (after
start-up, evaluation rounds left out) vs `client.site.SiteTrainer.train_round` called directly
on the same sites and config. Its fp32 simulation is shared with ``upload_ratio``."""

from __future__ import annotations

import contextlib
import logging
import statistics
from typing import Any

import torch

from client.bench.context import BenchContext, load_average
from client.bench.report import row
from client.bench.simulations import (
    SimulationRun,
    concurrent_sites,
    dataset_params,
    run_simulation,
    synthetic_root,
)
from client.bench.timing import ratio, time_call
from ppa.config import load_config
from ppa.model import create_model
from ppa.wire import global_keys, pack

logger = logging.getLogger("bench")


def federation_overrides(ctx: BenchContext) -> tuple[str, list[str]]:
    """Experiment and overrides shared by the federation_overhead and upload_ratio runs."""
    settings = ctx.bench.federation_overhead
    root = synthetic_root(ctx, dataset_params(ctx.bench.dataset))
    overrides = [
        f"dataset.root={root}",
        f"federation.rounds={int(settings.rounds)}",
        "federation.evaluate_initial=false",
        # Evaluate only after the last round, which the timing leaves out.
        "federation.evaluate_every=1000",
        *settings.overrides,
    ]
    return str(settings.experiment), overrides


def fp32_simulation(ctx: BenchContext) -> SimulationRun:
    """The fp32 federation run, shared by federation_overhead and upload_ratio."""
    if "fp32_run" not in ctx.shared:
        experiment, overrides = federation_overrides(ctx)
        run = run_simulation(
            ctx,
            "federation-fp32",
            experiment,
            overrides,
            timeout=float(ctx.bench.federation_overhead.timeout),
            sample_interval=float(ctx.bench.federation_overhead.sample_interval),
        )
        run.check()
        ctx.shared["fp32_run"] = run
    return ctx.shared["fp32_run"]


def clean_rounds(run: SimulationRun) -> list[dict[str, Any]]:
    """Rounds after start-up (round 1) without central evaluation."""
    return [r for r in run.rounds if r["round"] > 1 and not r.get("central")]


def simulated_per_sample(run: SimulationRun, concurrency: int) -> dict[str, Any]:
    """Seconds per trained sample in the simulation's clean rounds: round wall time (server
    side: send, train, receive, aggregate, checkpoint) / examples, and the sites' own
    train-seconds / examples-seen (per actor; divided by the concurrency for the machine)."""
    rounds = clean_rounds(run)
    if not rounds:
        raise RuntimeError(f"simulation {run.label}: no clean round (need >= 3 rounds)")
    per_round, in_app, outside = [], [], []
    for r in rounds:
        examples = sum(float(m.get("examples-seen", 0.0)) for m in r["sites"].values())
        train_seconds = sum(float(m.get("train-seconds", 0.0)) for m in r["sites"].values())
        per_round.append(r["seconds"] / examples)
        in_app.append(train_seconds / examples)
        outside.append(max(0.0, r["seconds"] - train_seconds / concurrency))
    return {
        "rounds": [r["round"] for r in rounds],
        "round_seconds": [r["seconds"] for r in rounds],
        "round_s_per_sample": statistics.median(per_round),
        "in_app_s_per_sample_per_actor": statistics.median(in_app),
        "in_app_s_per_sample": statistics.median(in_app) / concurrency,
        "outside_training_s_per_round": statistics.median(outside),
        "outside_training_share": statistics.median(
            o / r["seconds"] for o, r in zip(outside, rounds, strict=True)
        ),
    }


def _direct_worker(
    conn: Any, experiment: str, overrides: list[str], sites: list[int], threads: int
) -> None:
    """A process that holds `SiteTrainer`s for some sites (simulation partition ids) and
    trains them, in order, for each round number it receives; None ends it."""
    from client.site import SiteSpec, SiteTrainer
    from ppa.data.partition import site_layout
    from ppa.data.protocols import load_label_space, protocol_of

    torch.set_num_threads(threads)
    cfg = load_config([f"experiment={experiment}", *overrides])
    fed = cfg.federation
    layout = site_layout(
        str(fed.partition),
        protocol=protocol_of(cfg.dataset),
        sites_per_modality=int(fed.sites_per_modality),
    )
    torch.manual_seed(int(cfg.seed))  # the arrays the server sends in round 1
    state = create_model(cfg.model, len(load_label_space(cfg.dataset))).state_dict()
    arrays = pack(state, global_keys(state))
    trainers = {i: SiteTrainer(cfg, SiteSpec(None, None, None, i, len(layout))) for i in sites}
    conn.send(len(layout))
    while (server_round := conn.recv()) is not None:
        results = []
        for i, trainer in trainers.items():
            wall, _, result = time_call(
                lambda t=trainer: t.train_round(
                    arrays,
                    None,
                    server_round=server_round,
                    local_epochs=int(fed.local_epochs),
                    half_precision=False,
                )
            )
            results.append(
                (i, result.metrics["examples-seen"], result.metrics["train-seconds"], wall)
            )
        conn.send(results)
    conn.close()


class DirectSites:
    """Every site of the federation config trained by `SiteTrainer.train_round` with no
    Flower: `workers` processes side by side (sites dealt round-robin, as Ray's actors take
    them), each with `threads` intra-op threads, on the arrays the server sends in round 1."""

    def __init__(self, ctx: BenchContext, workers: int, threads: int):
        import multiprocessing

        experiment, overrides = federation_overrides(ctx)
        num_sites = self.count(ctx)
        self.workers, self.threads, self.num_sites = workers, threads, num_sites
        self.rounds_done = 0
        spawn = multiprocessing.get_context("spawn")  # no fork of a threaded torch process
        self._conns, self._procs = [], []
        for k in range(workers):
            parent, child = spawn.Pipe()
            proc = spawn.Process(
                target=_direct_worker,
                args=(
                    child,
                    experiment,
                    list(overrides),
                    list(range(k, num_sites, workers)),
                    threads,
                ),
                daemon=True,
            )
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)
        for conn in self._conns:
            conn.recv()  # the worker built its sites

    @staticmethod
    def count(ctx: BenchContext) -> int:
        """Sites of the federation config's partition."""
        from ppa.data.partition import site_layout
        from ppa.data.protocols import protocol_of

        experiment, overrides = federation_overrides(ctx)
        cfg = load_config([f"experiment={experiment}", *overrides])
        fed = cfg.federation
        return len(
            site_layout(
                str(fed.partition),
                protocol=protocol_of(cfg.dataset),
                sites_per_modality=int(fed.sites_per_modality),
            )
        )

    def train_round(self) -> dict[str, Any]:
        """One round over every site: per-sample seconds of the sites' training loops, and the
        round's wall time (the slowest worker)."""
        self.rounds_done += 1
        for conn in self._conns:
            conn.send(self.rounds_done)
        per_worker = [conn.recv() for conn in self._conns]
        examples = sum(r[1] for w in per_worker for r in w)
        seconds = sum(r[2] for w in per_worker for r in w)
        round_wall = max(sum(r[3] for r in w) for w in per_worker)
        return {
            "round": self.rounds_done,
            "workers": self.workers,
            "threads": self.threads,
            "examples": examples,
            "train_seconds_per_sample": seconds / examples,
            "round_wall_s": round_wall,
            "round_s_per_sample": round_wall / examples,
            "load": load_average(),
        }

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()

    def __enter__(self) -> DirectSites:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bench_federation_overhead(ctx: BenchContext) -> dict[str, Any]:
    """Per-site seconds per trained sample inside the simulation (the ClientApp's own
    train-seconds / examples-seen, clean rounds) vs `SiteTrainer.train_round` called directly
    on the same sites, as many side by side as Ray runs at once, with the threads a Ray actor
    gets; plus the round-level view and the cost of running sites side by side at all."""
    settings = ctx.bench.federation_overhead
    target = float(settings.target)
    experiment, overrides = federation_overrides(ctx)
    cfg = load_config([f"experiment={experiment}", *overrides])
    # A Ray actor of num_cpus CPUs runs torch with that many threads (Ray sets
    # OMP_NUM_THREADS); the direct calls get the same, so only the runtime differs.
    threads = int(cfg.federation.resources.num_cpus)
    warmups = max(0, int(settings.direct_rounds) - 1)
    alone = None
    if settings.get("direct_alone", False):
        with DirectSites(ctx, workers=1, threads=threads) as one:
            for _ in range(warmups):
                one.train_round()
            alone = one.train_round()
    num_sites = DirectSites.count(ctx)
    concurrency = concurrent_sites(cfg, num_sites)
    with DirectSites(ctx, workers=concurrency, threads=threads) as side:
        # Warm-up rounds (first-call allocations, kernel caches), then one round before and
        # one after the simulation: a change of the machine's load shows as their difference.
        warmup = [side.train_round() for _ in range(warmups)]
        before = side.train_round()
        run = fp32_simulation(ctx)
        after = side.train_round()
    simulated = simulated_per_sample(run, concurrency)
    direct_train = statistics.mean(
        [before["train_seconds_per_sample"], after["train_seconds_per_sample"]]
    )
    direct_round = statistics.mean([before["round_s_per_sample"], after["round_s_per_sample"]])
    overhead = ratio(simulated["in_app_s_per_sample_per_actor"], direct_train)
    round_overhead = ratio(simulated["round_s_per_sample"], direct_round)
    result: dict[str, Any] = {
        "simulation": {
            **simulated,
            "sites": num_sites,
            "concurrent_sites": concurrency,
            "ray_processes": run.ray_processes,
            "wall_s": run.wall_s,
            "log": str(run.log),
        },
        "threads_per_site": threads,
        "direct_warmup": warmup,
        "direct_before": before,
        "direct_after": after,
        "direct_alone": alone,
        "direct_train_s_per_sample": direct_train,
        "direct_round_s_per_sample": direct_round,
        "overhead": overhead,
        "round_overhead": round_overhead,
        "load": load_average(),
    }
    side_note = ""
    if alone is not None:
        result["side_by_side_slowdown"] = ratio(direct_train, alone["train_seconds_per_sample"])
        side_note = (
            f"; {concurrency} sites side by side vs one alone (no Flower): "
            f"{result['side_by_side_slowdown']:.2f}x"
        )
    result["rows"] = [
        row(
            "federation overhead, per-site s/sample in a simulation round / direct",
            overhead,
            unit="x",
            target=f"<= {target}",
            met=overhead <= target,
            note=(
                f"{num_sites} sites, {concurrency} at once in both, {threads} thread(s) each; "
                f"{1e3 * simulated['in_app_s_per_sample_per_actor']:.1f} vs "
                f"{1e3 * direct_train:.1f} ms/sample (direct before/after the simulation "
                f"{1e3 * before['train_seconds_per_sample']:.1f}/"
                f"{1e3 * after['train_seconds_per_sample']:.1f}){side_note}"
            ),
        ),
        row(
            "round-level: round wall s/sample, simulation / direct",
            round_overhead,
            unit="x",
            note=(
                f"outside the sites' training loops: "
                f"{100 * simulated['outside_training_share']:.0f} % of a "
                f"{statistics.median(simulated['round_seconds']):.1f} s round (messages, model "
                "load/pack, aggregation, checkpoint, waiting for the slowest site)"
            ),
        ),
    ]
    return result
