"""A simulation on an existing Ray cluster: `federation.ray_address` joins it.

The cluster is a real Ray head (`ray start --head`) bound to 127.0.0.1, on free ports, with
a temp folder of its own; scripts/run_simulation.py runs two sites on it. The head's session
logs show the simulation's driver connected; the head is stopped by PID (its processes carry
the test's temp folder), never with `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides
from flower_local import BIN, free_port, processes_with

pytestmark = [pytest.mark.slow, pytest.mark.integration]

HEAD_CPUS = 2  # two sites of one CPU each run side by side


def stop_by_pid(marker: str, grace: float = 20.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.5)


@pytest.fixture
def ray_head():
    # A short path: Ray's unix sockets live under it (at most 107 characters).
    temp_dir = Path(tempfile.mkdtemp(prefix="rayt-", dir="/tmp"))
    port = free_port()
    ports = {
        flag: str(free_port())
        for flag in (
            "--node-manager-port",
            "--object-manager-port",
            "--ray-client-server-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
        )
    }
    argv = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={HEAD_CPUS}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        *(f"{flag}={value}" for flag, value in ports.items()),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        stop_by_pid(str(temp_dir))
        left = processes_with(str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


def test_simulation_runs_on_an_existing_ray_cluster(
    ray_head, tiny_sysu_root: Path, tmp_path: Path
) -> None:
    address, temp_dir = ray_head
    session_logs = temp_dir / "session_latest" / "logs"
    assert not list(session_logs.glob("python-core-driver-*.log"))  # nobody attached yet
    overrides = tiny_overrides(
        tiny_sysu_root,
        tmp_path,
        "federation.partition=by_modality",
        "federation.rounds=1",
        "federation.min_train_sites=2",
        "federation.calibrate_norm_statistics=false",
        "train.max_batches_per_epoch=1",
        f"federation.ray_address={address}",
    )
    env = dict(os.environ, PPA_WORKDIR=str(tmp_path), OMP_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "run_simulation.py"),
            "--timeout",
            "900",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert summary["ray_address"] == address
    history = json.loads((tmp_path / "out" / "history.json").read_text())["rounds"]
    assert sorted(history[-1]["replied"]) == ["infrared", "visible"]
    # The simulation's Ray driver ran against this head, and its site actors on its workers.
    assert list(session_logs.glob("python-core-driver-*.log"))
    assert list(session_logs.glob("python-core-worker-*.log"))
