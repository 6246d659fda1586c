"""Flower simulations for the federation benchmarks: the benchmark's own synthetic sets, one
`ppa-simulate` launch with the memory of its whole process tree sampled from /proc, and what
the launch left behind (summary, history, peak memory)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from client.bench.context import REPO, BenchContext, read_json
from ppa.launch.proctree import descendants

logger = logging.getLogger("bench")


# The process name of a simulated site's Ray actor (Flower's ClientApp actor).
ACTOR_PROCESS = "ray::ClientAppActor"


def synthetic_root(ctx: BenchContext, params: Mapping[str, Any]) -> Path:
    """The benchmark's own synthetic SYSU set with these writer parameters (written once; the
    folder name hashes them, so sets of other sizes never collide with it or with data/)."""
    from ppa.synthetic.writer import write_synthetic_sysu

    params = dict(sorted(params.items()))
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    root = ctx.work_dir / "data" / f"sysu-{digest}"
    if not (root / "synthetic.json").is_file():
        logger.info("writing the synthetic set %s (%s)", root, params)
        write_synthetic_sysu(root, overwrite=True, **params)
    return root


def dataset_params(base: DictConfig, extra: DictConfig | None = None) -> dict[str, Any]:
    params = OmegaConf.to_container(base, resolve=True)
    if extra is not None:
        params.update(OmegaConf.to_container(extra, resolve=True))
    return params  # type: ignore[return-value]


def process_memory(pid: int) -> tuple[int, int, str]:
    """(RSS bytes, PSS bytes, command name) of one process; zeros if it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return 0, 0, ""
    return rss, pss, Path(cmdline).name if cmdline else ""


class TreeMemorySampler:
    """Samples the summed RSS and PSS of a process tree every `interval` seconds, in a thread.

    RSS counts shared pages once per process (the usual per-process sum); PSS splits them,
    so its sum is what the tree really occupies. Ray workers name themselves ``ray::...``;
    their count shows how many sites run at once.
    """

    def __init__(self, root: int, interval: float):
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = 0
        self.peak_processes: list[dict[str, Any]] = []
        self.ray_processes: dict[str, int] = {}  # Ray process name -> most seen at once
        self.peak_rss_by_name: dict[str, int] = {}  # name -> largest summed RSS of its kind
        self.series: list[tuple[float, int, int, int]] = []  # (t, rss, pss, processes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        per_process = [(pid, *process_memory(pid)) for pid in [self.root, *descendants(self.root)]]
        rss = sum(p[1] for p in per_process)
        pss = sum(p[2] for p in per_process)
        counts: dict[str, int] = {}
        for p in per_process:
            if p[3].startswith("ray::"):
                counts[p[3]] = counts.get(p[3], 0) + 1
        for name, count in counts.items():
            self.ray_processes[name] = max(self.ray_processes.get(name, 0), count)
        by_name: dict[str, int] = {}
        for p in per_process:
            by_name[p[3]] = by_name.get(p[3], 0) + p[1]
        for name, total in by_name.items():
            self.peak_rss_by_name[name] = max(self.peak_rss_by_name.get(name, 0), total)
        self.series.append((round(time.monotonic() - self._start, 2), rss, pss, len(per_process)))
        if rss > self.peak_rss:
            self.peak_rss = rss
            top = sorted(per_process, key=lambda p: -p[1])[:8]
            self.peak_processes = [{"name": p[3], "rss_mib": round(p[1] / 2**20, 1)} for p in top]
        self.peak_pss = max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                self.sample()
            self._stop.wait(self.interval)


@dataclass
class SimulationRun:
    """One `ppa-simulate` launch and what it left behind."""

    label: str
    output_dir: Path
    returncode: int
    wall_s: float
    summary: dict[str, Any]
    history: dict[str, Any]
    peak_rss: int
    peak_pss: int
    ray_processes: dict[str, int]
    peak_rss_by_name: dict[str, int]
    peak_processes: list[dict[str, Any]]
    memory_series: list[tuple[float, int, int, int]]
    log: Path

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return [r for r in self.history.get("rounds", []) if r.get("round", 0) > 0]

    def check(self) -> None:
        if self.returncode != 0 or not self.rounds:
            raise RuntimeError(
                f"simulation {self.label} failed (exit {self.returncode}, status "
                f"{self.summary.get('status')}); see {self.log}"
            )


def run_simulation(
    ctx: BenchContext,
    label: str,
    experiment: str,
    overrides: Sequence[str],
    *,
    timeout: float,
    sample_interval: float = 0.5,
) -> SimulationRun:
    """Launch a Flower simulation (its own SuperLink, stopped afterwards) and sample its
    process tree's memory until it ends."""
    out = ctx.work_dir / "runs" / label
    if out.exists():  # only ever a folder of this benchmark's own work dir
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log_path = ctx.output_dir / "logs" / f"{label}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "ppa.cli.simulate",
        "--experiment",
        experiment,
        "--timeout",
        str(timeout),
        *overrides,
        f"output_dir={out}",
        f"run_name=bench-{label}",
    ]
    env = dict(os.environ, PPA_WORKDIR=str(REPO), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    logger.info("simulation %s: %s", label, " ".join(cmd[1:]))
    start = time.perf_counter()
    with (
        open(log_path, "w") as log,
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT) as proc,
        TreeMemorySampler(proc.pid, sample_interval) as sampler,
    ):
        try:
            returncode = proc.wait(timeout=timeout + 120)
        except subprocess.TimeoutExpired:
            # run_simulation stops everything it started on SIGTERM.
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=120)
    wall = time.perf_counter() - start
    summary = read_json(out / "simulation.json")
    history = read_json(out / "history.json")
    run = SimulationRun(
        label,
        out,
        returncode,
        wall,
        summary,
        history,
        sampler.peak_rss,
        sampler.peak_pss,
        sampler.ray_processes,
        sampler.peak_rss_by_name,
        sampler.peak_processes,
        sampler.series,
        log_path,
    )
    logger.info(
        "simulation %s: exit %d after %.0f s, peak RSS %.0f MiB (PSS %.0f MiB)",
        label,
        returncode,
        wall,
        run.peak_rss / 2**20,
        run.peak_pss / 2**20,
    )
    return run


def concurrent_sites(cfg: DictConfig, num_sites: int) -> int:
    """Sites Ray runs at once: CPUs / federation.resources.num_cpus, at most the site count."""
    per_site = max(1, int(cfg.federation.resources.num_cpus))
    return max(1, min(num_sites, (os.cpu_count() or 1) // per_site))
