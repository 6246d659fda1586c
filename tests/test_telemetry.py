"""Telemetry over real HTTP: scraped by urllib and by a real Prometheus server on loopback."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from server.telemetry import Telemetry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_example_round(t: Telemetry) -> None:
    t.record_round(
        3,
        seconds=12.5,
        sampled=6,
        replied=5,
        failed=1,
        bytes_received=2_000_000,
        site_metrics={"cam1": {"loss": 1.25, "epsilon": 2.5}, "cam3": {"loss": 0.75}},
        flagged={"cam1": False, "cam3": True},
        exhausted=2,
    )
    t.record_evaluation(
        {"raw-raw": {"mAP": 0.42, "rank1": 0.5}, "anon-anon": {"mAP": 0.3, "rank1": 0.35}}
    )


@pytest.fixture
def telemetry():
    t = Telemetry()
    port = t.serve("127.0.0.1", 0)
    yield t, port
    t.close()


def test_metrics_scraped_over_http(telemetry) -> None:
    t, port = telemetry
    record_example_round(t)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    lines = {
        ln.split(" ")[0]: float(ln.split(" ")[1])
        for ln in text.splitlines()
        if ln.startswith("ppa_")
    }
    assert lines["ppa_rounds_completed_total"] == 1
    assert lines["ppa_current_round"] == 3
    assert lines["ppa_round_duration_seconds"] == 12.5
    assert lines["ppa_sites_sampled"] == 6
    assert lines["ppa_sites_replied"] == 5
    assert lines["ppa_sites_failed"] == 1
    assert lines["ppa_sites_exhausted"] == 2
    assert lines["ppa_round_received_bytes"] == 2e6
    assert lines["ppa_received_bytes_total"] == 2e6
    assert lines['ppa_site_train_loss{site="cam1"}'] == 1.25
    assert lines['ppa_site_epsilon{site="cam1"}'] == 2.5
    assert lines['ppa_site_flagged{site="cam3"}'] == 1
    assert lines['ppa_central_map{protocol="raw-raw"}'] == 0.42
    assert lines['ppa_central_rank1{protocol="anon-anon"}'] == 0.35


@pytest.mark.integration
def test_real_prometheus_scrapes_and_answers_queries(telemetry, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "the Prometheus server is not installed: run `make system-deps` "
            "(Debian package `prometheus`)"
        )
    t, port = telemetry
    record_example_round(t)
    web_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: ppa\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port}']\n"
    )
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{web_port}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    try:
        query = urllib.parse.urlencode({"query": 'ppa_central_map{protocol="raw-raw"}'})
        url = f"http://127.0.0.1:{web_port}/api/v1/query?{query}"
        deadline = time.monotonic() + 60
        value = None
        while time.monotonic() < deadline and value is None:
            time.sleep(1)
            try:
                answer = json.loads(urllib.request.urlopen(url, timeout=5).read())
            except OSError:
                continue
            result = answer.get("data", {}).get("result", [])
            if result:
                value = float(result[0]["value"][1])
        assert value == pytest.approx(0.42), (tmp_path / "prometheus.log").read_text()[-2000:]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
