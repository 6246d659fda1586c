"""The deployment launcher (ppa-deploy, ppa.launch.deployment) on real Flower processes on loopback.

A minimal Flower app with the PPA app's contract (run-config `experiment`/`overrides`/`resume`,
node-config `site`/`modality`/`data-root`/`dataset`) is written into tmp_path: its ServerApp runs
FedAvg on one float32 vector, each ClientApp adds 1, so after R rounds in which every site
replied the global vector is R. Both sides record what they saw under ``$PPA_WORKDIR/probe/``
(``server.json``; ``clients.jsonl``, one line per train start/end), which proves that the
launcher's environment, node-config and run-config reach the apps. Knobs travel as overrides:
``federation.rounds``, ``federation.round_timeout``, ``federation.min_available_sites``,
``probe.delay`` (seconds each train call sleeps).

The real PPA app through the same launcher: tests/test_deployment_app.py.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ppa.launch.deployment import Deployment, DeploymentError, DeploymentSettings
from ppa.launch.processes import LOGGER, RunTimeoutError
from ppa.node_config import SiteSpec

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "ppa-deploy"  # the console script (pip install -e .)

pytestmark = pytest.mark.integration

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "ppa-deploy-probe"
version = "0.1.0"
description = "Launcher test app with the PPA run-config and node-config contract"
license = "Apache-2.0"
dependencies = ["flwr>=1.41"]

[tool.flwr.app]
publisher = "ppatest"

[tool.flwr.app.components]
serverapp = "probe_app.server:app"
clientapp = "probe_app.client:app"

[tool.flwr.app.config]
experiment = "demo"
overrides = ""
resume = false
"""

COMMON = '''\
"""Shared helpers of the probe app."""

import os
from pathlib import Path


def overrides(run_config) -> dict:
    """Parse the space-separated `key=value` overrides of the run-config."""
    text = str(run_config.get("overrides", ""))
    return dict(item.lstrip("+").split("=", 1) for item in text.split() if "=" in item)


def record_dir() -> Path:
    folder = Path(os.environ["PPA_WORKDIR"]) / "probe"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
'''

SERVER = '''\
"""Probe ServerApp: FedAvg on one vector, records every round's replies."""

import json
import os

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from probe_app.common import overrides, record_dir

app = ServerApp()


class RecordingFedAvg(FedAvg):
    """FedAvg that remembers how many replies and errors each round got."""

    rounds: list = []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        errors = sum(1 for r in replies if r.has_error())
        self.rounds.append({"round": server_round, "replies": len(replies) - errors,
                            "errors": errors})
        return super().aggregate_train(server_round, replies)


@app.main()
def main(grid: Grid, context: Context) -> None:
    opts = overrides(context.run_config)
    rounds = int(opts.get("federation.rounds", 2))
    min_sites = int(opts.get("federation.min_available_sites", 2))
    strategy = RecordingFedAvg(fraction_train=1.0, fraction_evaluate=0.0,
                               min_train_nodes=min_sites, min_available_nodes=min_sites)
    result = strategy.start(
        grid=grid, initial_arrays=ArrayRecord([np.zeros(3, dtype=np.float32)]),
        num_rounds=rounds, timeout=float(opts.get("federation.round_timeout", 120)),
        train_config=ConfigRecord({"delay": float(opts.get("probe.delay", 0))}),
    )
    final = result.arrays.to_numpy_ndarrays()[0].tolist()
    (record_dir() / "server.json").write_text(json.dumps({
        "run_config": dict(context.run_config), "rounds": strategy.rounds, "final": final,
        "workdir": os.environ["PPA_WORKDIR"],
        "runtime_install_disabled": os.environ.get(
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"),
    }))
    print("PROBE-FINAL", final, flush=True)
'''

CLIENT = '''\
"""Probe ClientApp: adds 1 to the vector, records its node-config."""

import json
import os
import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from probe_app.common import record_dir

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    with (record_dir() / "clients.jsonl").open("a") as out:
        out.write(json.dumps({"event": "start", "round": int(config["server-round"]),
                              "pid": os.getpid(), **dict(context.node_config)}) + "\\n")
    time.sleep(float(config["delay"]))
    arrays = [a + 1.0 for a in msg.content["arrays"].to_numpy_ndarrays()]
    with (record_dir() / "clients.jsonl").open("a") as out:
        out.write(json.dumps({"event": "done", "round": int(config["server-round"]),
                              "pid": os.getpid(), **dict(context.node_config)}) + "\\n")
    reply = RecordDict({"arrays": ArrayRecord(arrays),
                        "metrics": MetricRecord({"num-examples": 1})})
    return Message(content=reply, reply_to=msg)
'''


def write_probe_app(folder: Path) -> Path:
    """Write the probe app into `folder` (created) and return it."""
    package = folder / "probe_app"
    package.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "common.py").write_text(COMMON)
    (package / "server.py").write_text(SERVER)
    (package / "client.py").write_text(CLIENT)
    return folder


def read_server_record(workdir: Path) -> dict:
    return json.loads((workdir / "probe" / "server.json").read_text())


def read_client_records(workdir: Path) -> list[dict]:
    path = workdir / "probe" / "clients.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- helpers


def live_processes_mentioning(marker: str) -> list[str]:
    """Command lines of live processes whose environment or arguments contain `marker`.

    Every process of a deployment carries FLWR_HOME=<output dir>/flwr-home/... in its
    environment (children inherit it), so this finds leftovers of a deployment.
    """
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":
                continue
            blob = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if needle in blob:
            found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found


def wait_until(predicate, timeout: float, what: str, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def probe(tmp_path: Path) -> dict:
    """The probe app, a workdir, and one (empty) data root per site."""
    roots = {}
    for site in ("cam1", "cam3"):
        roots[site] = tmp_path / "data" / site
        roots[site].mkdir(parents=True)
    workdir = tmp_path / "work"
    workdir.mkdir()
    return {
        "app": write_probe_app(tmp_path / "app"),
        "workdir": workdir,
        "roots": roots,
        "out": tmp_path / "out",
    }


def launcher_argv(probe: dict, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "--app",
        str(probe["app"]),
        "--workdir",
        str(probe["workdir"]),
        "--output-dir",
        str(probe["out"]),
        "--site",
        f"cam1:visible:{probe['roots']['cam1']}",
        "--site",
        f"cam3:infrared:{probe['roots']['cam3']}",
        *extra,
    ]


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
@pytest.mark.parametrize("secure", [False, True], ids=["insecure", "tls+auth"])
def test_launcher_runs_two_sites_two_rounds(probe: dict, secure: bool) -> None:
    argv = launcher_argv(probe, "--rounds", "2", "--timeout", "180", "+probe.delay=0")
    if secure:
        argv += ["--tls", "--auth"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    out: Path = probe["out"]
    summary = json.loads((out / "deployment.json").read_text())
    assert summary["status"] == "finished:completed"
    assert summary["tls"] is secure and summary["auth"] is secure
    # The SuperLink's state stayed in memory (the default): no state file was written.
    assert summary["state_file"] is False and not (out / "superlink" / "state.db").exists()
    assert summary["run_config"] == {
        "experiment": "demo",
        "overrides": "+probe.delay=0 federation.rounds=2",
        "resume": False,
    }

    server = read_server_record(probe["workdir"])
    assert server["final"] == [2.0, 2.0, 2.0]  # two rounds, every site replied
    assert server["rounds"] == [
        {"round": 1, "replies": 2, "errors": 0},
        {"round": 2, "replies": 2, "errors": 0},
    ]
    assert server["run_config"] == summary["run_config"]
    assert server["workdir"] == str(probe["workdir"].resolve())
    assert server["runtime_install_disabled"] == "1"

    done_events = [r for r in read_client_records(probe["workdir"]) if r["event"] == "done"]
    assert sorted((r["site"], r["round"]) for r in done_events) == [
        ("cam1", 1),
        ("cam1", 2),
        ("cam3", 1),
        ("cam3", 2),
    ]
    by_site = {r["site"]: r for r in done_events}
    assert by_site["cam1"]["modality"] == "visible"
    assert by_site["cam3"]["modality"] == "infrared"
    assert by_site["cam1"]["data-root"] == str(probe["roots"]["cam1"])
    assert by_site["cam3"]["data-root"] == str(probe["roots"]["cam3"])
    assert {r["dataset"] for r in done_events} == {"sysu"}  # experiment demo: synthetic SYSU

    logs = out / "logs"
    run_log = (logs / f"run-{summary['run_id']}.log").read_text()
    assert "PROBE-FINAL [2.0, 2.0, 2.0]" in run_log
    superlink_log = (logs / "superlink.log").read_text()
    for site in ("cam1", "cam3"):
        assert "Start `flwr-clientapp`" in (logs / f"supernode-{site}.log").read_text()
    if secure:
        assert "Uvicorn running on https://" in superlink_log
        assert set(summary["node_ids"]) == {"cam1", "cam3"}
        for node_id in summary["node_ids"].values():
            assert f"Activated node_id={node_id}" in superlink_log
        assert (out / "certs" / "supernodes" / "cam1.pub").exists()
    else:
        assert "Uvicorn running on http://" in superlink_log
    assert live_processes_mentioning(str(out)) == []


@pytest.mark.slow
def test_unregistered_supernode_is_refused_and_never_gets_the_model(probe: dict) -> None:
    settings = DeploymentSettings(
        output_dir=probe["out"],
        app_dir=probe["app"],
        workdir=probe["workdir"],
        tls=True,
        auth=True,
        startup_timeout=60,
        stop_grace=10,
    )
    sites = [
        SiteSpec.deployed("cam1", "visible", probe["roots"]["cam1"], "sysu"),
        SiteSpec.deployed("cam3", "infrared", probe["roots"]["cam3"], "sysu"),
    ]
    rogue_site = SiteSpec.deployed("rogue", "visible", probe["roots"]["cam1"], "sysu")
    with Deployment(settings) as deployment:
        deployment.start_superlink()
        # TLS really is on, with a certificate for 127.0.0.1 issued by our CA.
        context = ssl.create_default_context(cafile=str(probe["out"] / "certs" / "ca.crt"))
        with (
            socket.create_connection(("127.0.0.1", deployment.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")

        for site in sites:
            deployment.start_supernode(site)
        # A SuperNode with a valid key pair the SuperLink was never told about.
        rogue = deployment.start_supernode(rogue_site, register=False)
        deployment.wait_for_nodes(["cam1", "cam3"])
        assert rogue.wait(timeout=60) != 0  # refused: the SuperNode gives up

        result = deployment.run(
            {"experiment": "demo", "overrides": "federation.rounds=2", "resume": False}, timeout=180
        )
        nodes = deployment.list_nodes()
        registered = dict(deployment.node_ids)
    assert result.completed, result.details

    rogue_log = rogue.log_text()
    assert "Failed to activate SuperNode" in rogue_log
    assert "Received successfully" not in rogue_log
    assert "Start `flwr-clientapp`" not in rogue_log
    superlink_log = (probe["out"] / "logs" / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink_log
    assert '"POST /v1/fleet/activate-node HTTP/1.1" 412' in superlink_log
    # The SuperLink knows exactly the two registered nodes; only they trained.
    assert sorted(int(n["node-id"]) for n in nodes) == sorted(registered.values())
    records = read_client_records(probe["workdir"])
    assert {r["site"] for r in records} == {"cam1", "cam3"}
    assert read_server_record(probe["workdir"])["final"] == [2.0, 2.0, 2.0]
    assert live_processes_mentioning(str(probe["out"])) == []


@pytest.mark.slow
def test_supernode_killed_mid_round_run_completes_and_node_rejoins(probe: dict) -> None:
    settings = DeploymentSettings(
        output_dir=probe["out"],
        app_dir=probe["app"],
        workdir=probe["workdir"],
        startup_timeout=60,
        stop_grace=10,
    )
    cam1 = SiteSpec.deployed("cam1", "visible", probe["roots"]["cam1"], "sysu")
    cam3 = SiteSpec.deployed("cam3", "infrared", probe["roots"]["cam3"], "sysu")
    with Deployment(settings) as deployment:
        deployment.start_superlink()
        deployment.start_supernode(cam1)
        deployment.start_supernode(cam3)
        deployment.wait_for_nodes(["cam1", "cam3"])
        run_id = deployment.submit(
            {
                "experiment": "demo",
                "resume": False,
                "overrides": "federation.rounds=3 federation.round_timeout=20 +probe.delay=5",
            }
        )
        deployment.follow(run_id)

        def cam3_training_round_1():
            return [
                r
                for r in read_client_records(probe["workdir"])
                if r["site"] == "cam3" and r["round"] == 1 and r["event"] == "start"
            ]

        killed = wait_until(cam3_training_round_1, 120, "cam3 to start round 1")[0]
        deployment.stop_supernode("cam3", kill=True)  # SIGKILL: a crash, no goodbye
        deployment.start_supernode(cam3)  # the site comes back (a new process, new node)
        details = deployment.wait_for_run(run_id, timeout=300)
    assert details["status"] == "finished:completed"

    server = read_server_record(probe["workdir"])
    assert [r["round"] for r in server["rounds"]] == [1, 2, 3]
    assert server["rounds"][0]["replies"] == 1  # round 1 completed without cam3
    # Every round aggregated at least one +1 update: nothing was lost.
    assert server["final"] == [3.0, 3.0, 3.0]
    records = read_client_records(probe["workdir"])
    assert not [r for r in records if r["pid"] == killed["pid"] and r["event"] == "done"]
    rejoined = [r for r in records if r["site"] == "cam3" and r["event"] == "done"]
    assert rejoined and min(r["round"] for r in rejoined) >= 2
    assert all(r["pid"] != killed["pid"] for r in rejoined)
    assert live_processes_mentioning(str(probe["out"])) == []


def test_launcher_timeout_stops_the_run_and_every_process(probe: dict) -> None:
    argv = launcher_argv(probe, "--rounds", "1", "--timeout", "6", "+probe.delay=60")
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 124, done.stdout + done.stderr
    assert time.monotonic() - started < 90
    summary = json.loads((probe["out"] / "deployment.json").read_text())
    assert summary["status"] == "timeout"
    assert "still" in done.stderr and "after 6.0 s" in done.stderr
    assert live_processes_mentioning(str(probe["out"])) == []


def impatient_status(deployment: Deployment, calls: list[float], late: int | None) -> None:
    """Make the first `late` status calls (`flwr ls`; None: every one) time out for real: the
    CLI gets 10 ms, less than any Python start-up, as on a machine too loaded to start it."""
    real = deployment.flwr_json

    def flwr_json(*args: str, **kwargs) -> dict:
        if args[0] == "ls" and (late is None or len(calls) < late):
            calls.append(time.monotonic())
            kwargs["timeout"] = 0.01
        return real(*args, **kwargs)

    deployment.flwr_json = flwr_json  # type: ignore[method-assign]


def start_two_site_run(deployment: Deployment, probe: dict, overrides: str) -> int:
    deployment.start_superlink()
    deployment.start_supernode(SiteSpec.deployed("cam1", "visible", probe["roots"]["cam1"], "sysu"))
    deployment.start_supernode(
        SiteSpec.deployed("cam3", "infrared", probe["roots"]["cam3"], "sysu")
    )
    deployment.wait_for_nodes(["cam1", "cam3"])
    run_id = deployment.submit({"experiment": "demo", "resume": False, "overrides": overrides})
    deployment.follow(run_id)
    return run_id


def probe_settings(probe: dict) -> DeploymentSettings:
    return DeploymentSettings(
        output_dir=probe["out"],
        app_dir=probe["app"],
        workdir=probe["workdir"],
        startup_timeout=60,
        stop_grace=10,
    )


@pytest.mark.slow
def test_a_status_call_that_does_not_answer_is_asked_again(
    probe: dict, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[float] = []
    with Deployment(probe_settings(probe)) as deployment:
        run_id = start_two_site_run(deployment, probe, "federation.rounds=2")
        impatient_status(deployment, calls, late=2)
        with caplog.at_level(logging.WARNING, logger=LOGGER.name):
            details = deployment.wait_for_run(run_id, timeout=300, poll=0.5)
    assert details["status"] == "finished:completed"
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.5  # asked again after `poll`
    warned = [r.getMessage() for r in caplog.records if "did not answer" in r.getMessage()]
    assert len(warned) == 2 and all(f"run {run_id}:" in w for w in warned)
    assert read_server_record(probe["workdir"])["final"] == [2.0, 2.0, 2.0]
    assert live_processes_mentioning(str(probe["out"])) == []


def test_a_status_that_never_answers_ends_at_the_run_deadline(probe: dict) -> None:
    calls: list[float] = []
    with Deployment(probe_settings(probe)) as deployment:
        run_id = start_two_site_run(deployment, probe, "federation.rounds=1 +probe.delay=60")
        impatient_status(deployment, calls, late=None)
        started = time.monotonic()
        with pytest.raises(RunTimeoutError, match=f"run {run_id}: no status after 3"):
            deployment.wait_for_run(run_id, timeout=3, poll=0.5)
        assert 3 <= time.monotonic() - started < 30
    assert len(calls) >= 3  # asked every 0.5 s until the deadline
    assert live_processes_mentioning(str(probe["out"])) == []


def test_superlink_that_cannot_start_is_reported_with_its_log(probe: dict) -> None:
    settings = DeploymentSettings(
        output_dir=probe["out"], app_dir=probe["app"], workdir=probe["workdir"], startup_timeout=30
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with Deployment(settings) as deployment:
            deployment.port = taken.getsockname()[1]  # someone else holds the port
            with pytest.raises(DeploymentError, match=r"superlink exited") as info:
                deployment.start_superlink()
    assert str(probe["out"] / "logs" / "superlink.log") in str(info.value)
    assert live_processes_mentioning(str(probe["out"])) == []


@pytest.mark.slow
def test_processes_do_not_outlive_a_killed_launcher(probe: dict) -> None:
    """SIGKILL leaves the launcher no chance to clean up: its children must go by themselves."""
    argv = launcher_argv(probe, "--rounds", "1", "--timeout", "300", "+probe.delay=10")
    launcher_process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(
            lambda: [r for r in read_client_records(probe["workdir"]) if r["event"] == "start"],
            120,
            "a site to start training",
        )
        assert live_processes_mentioning(str(probe["out"]))
    finally:
        launcher_process.kill()
        launcher_process.wait()
    # SuperLink and SuperNodes get SIGTERM from the kernel (PR_SET_PDEATHSIG) and take their
    # SuperExecs along; a ClientApp in the middle of its 10 s train step finishes it and exits.
    wait_until(
        lambda: not live_processes_mentioning(str(probe["out"])),
        90,
        "the deployment's processes to exit after the launcher died",
    )
