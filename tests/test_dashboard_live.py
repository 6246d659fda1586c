"""The Grafana dashboard against a real run: every panel's query returns data.

A short real federated run (scripts/run_simulation.py, two sites, two rounds, DP on so the
epsilon panels have series) serves its metrics; the real Prometheus server (Debian package,
`make system-deps`) scrapes them with docker/prometheus.yml (target rewritten to loopback,
1 s interval). Afterwards every query of docker/grafana/dashboards/ppa-federation.json, with
the dashboard's variables set to this run, returns data over the run's time range, and the
variables' own queries list this run, its protocols and its sites.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_overrides
from flower_local import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "ppa-federation.json"
PROMETHEUS_CONFIG = REPO / "docker" / "prometheus.yml"


def substitute(expr: str, run_id: str, seconds: int) -> str:
    """The query as Grafana sends it with run=<this run>, every protocol and site."""
    for name, value in (
        ("$__rate_interval", "15s"),
        ("$__range", f"{seconds}s"),
        ("$run", run_id),
        ("$protocol", ".*"),
        ("$site", ".*"),
    ):
        expr = expr.replace(name, value)
    return expr


@pytest.fixture
def prometheus(tmp_path: Path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the Prometheus server is not installed: run `make system-deps`")
    metrics_port, web_port = free_port(), free_port()
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{metrics_port}"]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--web.listen-address=127.0.0.1:{web_port}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield metrics_port, f"http://127.0.0.1:{web_port}/api/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def api(base: str, path: str, **params: str) -> object:
    url = f"{base}/{path}?" + urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.load(answer)
    assert body["status"] == "success", body
    return body["data"]


def test_every_panel_has_data_after_a_short_run(
    prometheus, tiny_sysu_root: Path, tmp_path: Path
) -> None:
    metrics_port, base = prometheus
    overrides = tiny_overrides(
        tiny_sysu_root,
        tmp_path,
        "federation.partition=by_modality",
        "federation.rounds=2",
        "federation.min_train_sites=2",
        "federation.calibrate_norm_statistics=false",
        "train.max_batches_per_epoch=1",
        "privacy=dp",
        "privacy.secret_seed=0",
        "privacy.share_losses=true",  # the loss panel needs the sites to report losses
        "telemetry.enabled=true",
        f"telemetry.port={metrics_port}",
        "run_name=dashboard",
    )
    env = dict(os.environ, PPA_WORKDIR=str(tmp_path), OMP_NUM_THREADS="1")
    started = time.time()
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
    time.sleep(2)  # the last scrapes land
    ended = time.time()
    run_id = str(json.loads((tmp_path / "out" / "simulation.json").read_text())["run_id"])
    window = {"start": f"{started:.0f}", "end": f"{ended:.0f}", "step": "1"}
    seconds = math.ceil(ended - started)

    dashboard = json.loads(DASHBOARD.read_text())
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            query = substitute(target["expr"], run_id, seconds)
            result = api(base, "query_range", query=query, **window)["result"]
            values = [float(v) for series in result for _, v in series["values"]]
            if not [v for v in values if not math.isnan(v)]:
                empty.append(f"{panel['title']}: {query}")
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # The variables' queries: label_values(<selector>, <label>) through the series API.
    found = {}
    for variable in dashboard["templating"]["list"]:
        definition = variable["query"]["query"]
        selector, label = definition[len("label_values(") : -1].rsplit(", ", 1)
        series = api(
            base,
            "series",
            **{"match[]": substitute(selector, run_id, seconds)},
            start=window["start"],
            end=window["end"],
        )
        found[variable["name"]] = {s[label] for s in series}
    assert run_id in found["run"]
    assert {"raw-raw", "anon-anon"} <= found["protocol"]
    assert found["site"] == {"visible", "infrared"}
    info = api(base, "query_range", query=f'ppa_run_info{{run_id="{run_id}"}}', **window)
    assert info["result"][0]["metric"]["run_name"] == "dashboard"
