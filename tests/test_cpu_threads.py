"""ppa/cpu_threads.py: each site process's share of the host's cores, and where it comes from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ppa.cpu_threads import (
    BLAS_ENVS,
    THREADS_ENV,
    cgroup_cpu_limit,
    share_threads,
    thread_env,
    threads_per_site,
)


def cgroup_v2(tmp_path: Path, line: str) -> Path:
    (tmp_path / "cpu.max").write_text(line + "\n")
    return tmp_path


def cgroup_v1(tmp_path: Path, quota: int, period: int) -> Path:
    folder = tmp_path / "cpu"
    folder.mkdir()
    (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (folder / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


def test_cgroup_quota_v2_and_v1(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(cgroup_v2(tmp_path / "a", "50000 100000")) == 0.5
    assert cgroup_cpu_limit(cgroup_v2(tmp_path / "b", "max 100000")) is None
    assert cgroup_cpu_limit(cgroup_v1(tmp_path / "c", 250000, 100000)) == 2.5
    assert cgroup_cpu_limit(cgroup_v1(tmp_path / "d", -1, 100000)) is None
    assert cgroup_cpu_limit(tmp_path / "nothing") is None


@pytest.fixture(autouse=True)
def _dirs(tmp_path: Path) -> None:
    for name in "abcd":
        (tmp_path / name).mkdir()


def test_share_precedence(tmp_path: Path) -> None:
    quota = cgroup_v1(tmp_path / "a", 33000, 100000)  # compose cpus: 0.33
    big = cgroup_v2(tmp_path / "b", "300000 100000")  # cpus: 3
    # The quota, rounded down, at least one thread.
    assert share_threads({}, quota) == 1
    assert share_threads({}, big) == 3
    # Whoever started the process decided: OMP_NUM_THREADS (Ray's 1 per actor) wins over it.
    assert share_threads({"OMP_NUM_THREADS": "2"}, quota) == 2
    # The launcher's explicit share wins over both.
    assert share_threads({THREADS_ENV: "4", "OMP_NUM_THREADS": "2"}, quota) == 4
    # No share at all: torch keeps its default.
    assert share_threads({}, tmp_path / "c") is None
    with pytest.raises(ValueError, match="PPA_CPU_THREADS='0'"):
        share_threads({THREADS_ENV: "0"}, quota)
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='two'"):
        share_threads({"OMP_NUM_THREADS": "two"}, quota)


def test_threads_per_site_is_an_equal_share() -> None:
    assert threads_per_site(6, cores=2) == 1  # never zero
    assert threads_per_site(2, cores=2) == 1
    assert threads_per_site(6, cores=64) == 10
    assert threads_per_site(1, cores=8) == 8
    with pytest.raises(ValueError, match="sites must be >= 1"):
        threads_per_site(0, cores=2)


def test_thread_env_covers_torch_and_blas() -> None:
    env = thread_env(3)
    assert env[THREADS_ENV] == "3"
    assert {env[name] for name in BLAS_ENVS} == {"3"}


def test_apply_share_sets_torch_threads_in_a_fresh_process() -> None:
    """A site process started with the launcher's environment runs torch on its share."""
    code = (
        "import json, os, torch; from ppa.cpu_threads import apply_share; "
        "before = torch.get_num_threads(); n = apply_share(); "
        "print(json.dumps([before, n, torch.get_num_threads(), os.environ['MKL_NUM_THREADS']]))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in BLAS_ENVS}
    env[THREADS_ENV] = "1"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    _, applied, after, mkl = json.loads(done.stdout.strip().splitlines()[-1])
    assert (applied, after, mkl) == (1, 1, "1")
