"""What every benchmark gets (`BenchContext`: the composed config, its folders, state shared
between benchmarks), the machine and load the numbers were measured with, and the JSON files
the suite reads back."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ppa.config import load_config

logger = logging.getLogger("bench")

# The project checkout: relative bench folders are anchored here, simulations run here.
REPO = Path(__file__).resolve().parents[2]


def load_average() -> dict[str, float]:
    """`uptime`'s 1/5/15-minute load averages."""
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": None,
        "gpu": None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "git": git_revision(),
        "load_at_start": load_average(),
    }
    with contextlib.suppress(OSError, ValueError, IndexError):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        info["memory_gib"] = round(int(meminfo[0].split()[1]) / 2**20, 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(ImportError):
        import flwr

        info["flwr"] = flwr.__version__
    return info


def git_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+dirty' if dirty else ''}"


def load_bench_config(overrides: Sequence[str] = (), quick: bool = False) -> DictConfig:
    """The root config with the `bench` group (configs/bench/default.yaml) composed in; with
    `quick`, `bench.quick` merged over `bench`."""
    overrides = list(overrides)
    if "bench" not in load_config([]):  # not (yet) in configs/config.yaml's defaults list
        overrides.insert(0, "+bench=default")
    cfg = load_config(overrides)
    if quick and cfg.bench.get("quick") is not None:
        bench = OmegaConf.merge(cfg.bench, cfg.bench.quick)
        OmegaConf.set_struct(cfg, False)
        cfg.bench = bench
    return cfg


def anchored(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO / p


@dataclass
class BenchContext:
    """What every benchmark gets: the composed config, its folders and the shared state."""

    cfg: DictConfig
    quick: bool
    output_dir: Path
    work_dir: Path
    shared: dict[str, Any] = field(default_factory=dict)  # e.g. the fp32 simulation

    @property
    def bench(self) -> DictConfig:
        return self.cfg.bench


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
