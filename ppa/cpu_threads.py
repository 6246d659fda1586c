"""How many CPU threads a site process gives torch and the BLAS libraries: its share of the host.

Sites that share one host share its cores. torch sizes its intra-op pool by the machine's
cores, not by what the process may use, so six site processes on a 2-core host each start
2 threads that spin at OpenMP barriers for cores their neighbours hold (docker/README.md
measures the loss), and a container limited by a CPU quota (compose ``cpus``) starts as many
threads as the host has and is throttled. The share, first that applies:

1. ``PPA_CPU_THREADS`` in the environment (the loopback deployment sets it per SuperNode);
2. ``OMP_NUM_THREADS`` (already chosen by whoever started the process, e.g. Ray's 1 per
   simulated-site actor);
3. the CPU quota of the process's cgroup (what compose ``cpus`` sets), rounded down, at
   least 1;
4. none: torch's default (the process has the machine to itself).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

logger = logging.getLogger(__name__)

THREADS_ENV = "PPA_CPU_THREADS"
OMP_ENV = "OMP_NUM_THREADS"
# Read by OpenMP, MKL, OpenBLAS and numexpr at start-up: child processes follow the share.
BLAS_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the CFS quota of this process's cgroup (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None without a quota."""
    v2 = root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota == "max" or not period:
            return None
        return int(quota) / int(period)
    for folder in (root / "cpu", root / "cpu,cpuacct"):
        quota_file, period_file = folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota = int(quota_file.read_text().strip())
            if quota <= 0:  # -1: no quota
                return None
            return quota / int(period_file.read_text().strip())
    return None


def _positive_int(name: str, value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{name}={value!r}: expected a whole number of threads >= 1")
    return count


def share_threads(environ: Mapping[str, str] = os.environ, root: Path = CGROUP_ROOT) -> int | None:
    """This process's thread share (module docstring); None leaves torch's default."""
    for name in (THREADS_ENV, OMP_ENV):
        if environ.get(name, "").strip():
            return _positive_int(name, environ[name].strip())
    limit = cgroup_cpu_limit(root)
    if limit is None:
        return None
    return max(1, math.floor(limit))


def threads_per_site(sites: int, cores: int | None = None) -> int:
    """An equal share of the host's cores for each of `sites` processes, at least 1."""
    if sites < 1:
        raise ValueError(f"threads_per_site: sites must be >= 1, got {sites}")
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, cores // sites)


def thread_env(threads: int) -> dict[str, str]:
    """Environment that gives a process (and its children) `threads` threads."""
    return {THREADS_ENV: str(threads), **{name: str(threads) for name in BLAS_ENVS}}


def apply_share(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """Set torch's intra-op threads to the share, and the BLAS variables for child processes.

    Returns the thread count, or None when no share applies (torch keeps its default).
    """
    import torch  # here, so that reading the share needs no torch

    threads = share_threads(environ)
    if threads is None:
        return None
    for name in BLAS_ENVS:
        environ.setdefault(name, str(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        logger.info("torch uses %d CPU thread(s): this process's share of the host", threads)
    return threads
