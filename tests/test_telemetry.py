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
    t = Telemetry("demo", "42", round_buckets=[5, 10, 60])
    port = t.serve("127.0.0.1", 0)
    yield t, port
    t.close()


def scrape(port: int) -> dict[str, float]:
    """`name{labels}` -> value, with this run's labels (checked) written as RUN first."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if not line.startswith("ppa_"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        pairs = [p for p in labels.rstrip("}").split(",") if p]
        assert {'run_id="42"', 'run_name="demo"'} <= set(pairs), line
        rest = [p for p in pairs if not p.startswith(("run_id=", "run_name="))]
        out[name + "{" + ",".join(["RUN", *rest]) + "}"] = float(value)
    return out


def test_metrics_scraped_over_http(telemetry) -> None:
    t, port = telemetry
    # Before the first round the run's counters are there at 0 (a rate is defined from the
    # run's start); the gauges of a round are not.
    before = scrape(port)
    assert before["ppa_rounds_completed_total{RUN}"] == 0
    assert before["ppa_received_bytes_total{RUN}"] == 0
    assert before["ppa_round_duration_seconds_count{RUN}"] == 0
    assert "ppa_sites_replied{RUN}" not in before
    record_example_round(t)
    lines = scrape(port)
    assert lines["ppa_run_info{RUN}"] == 1
    assert lines["ppa_rounds_completed_total{RUN}"] == 1
    assert lines["ppa_current_round{RUN}"] == 3
    # The round duration is a histogram: 12.5 s falls in the 60 s bucket, not in 5 or 10.
    assert lines['ppa_round_duration_seconds_bucket{RUN,le="10.0"}'] == 0
    assert lines['ppa_round_duration_seconds_bucket{RUN,le="60.0"}'] == 1
    assert lines["ppa_round_duration_seconds_sum{RUN}"] == 12.5
    assert lines["ppa_round_duration_seconds_count{RUN}"] == 1
    assert lines["ppa_sites_sampled{RUN}"] == 6
    assert lines["ppa_sites_replied{RUN}"] == 5
    assert lines["ppa_sites_failed{RUN}"] == 1
    assert lines["ppa_sites_exhausted{RUN}"] == 2
    assert lines["ppa_round_received_bytes{RUN}"] == 2e6
    assert lines["ppa_received_bytes_total{RUN}"] == 2e6
    assert lines['ppa_site_train_loss{RUN,site="cam1"}'] == 1.25
    assert lines['ppa_site_epsilon{RUN,site="cam1"}'] == 2.5
    assert lines['ppa_site_flagged{RUN,site="cam3"}'] == 1
    # Values in 0..1 are named _ratio.
    assert lines['ppa_central_map_ratio{RUN,protocol="raw-raw"}'] == 0.42
    assert lines['ppa_central_rank1_ratio{RUN,protocol="anon-anon"}'] == 0.35
    assert not [k for k in lines if k.startswith("ppa_central_map{")]


def test_a_site_that_leaves_loses_its_series(telemetry) -> None:
    t, port = telemetry
    record_example_round(t)
    t.record_round(
        4,
        seconds=3.0,
        sampled=6,
        replied=1,
        failed=5,
        bytes_received=10,
        site_metrics={"cam1": {"loss": 1.0, "epsilon": 3.0}},
        flagged={"cam1": False},
    )
    lines = scrape(port)
    assert lines['ppa_site_train_loss{RUN,site="cam1"}'] == 1.0
    assert not [k for k in lines if 'site="cam3"' in k]  # loss and flag of cam3 are gone
    assert lines["ppa_round_duration_seconds_count{RUN}"] == 2
    assert lines['ppa_round_duration_seconds_bucket{RUN,le="5.0"}'] == 1


def test_successive_runs_are_separate_series() -> None:
    first, second = Telemetry("demo", "1"), Telemetry("demo", "2")
    for t, value in ((first, 0.1), (second, 0.2)):
        t.record_evaluation({"raw-raw": {"mAP": value, "rank1": value}})
    from prometheus_client import generate_latest

    text = generate_latest(first.registry).decode() + generate_latest(second.registry).decode()
    assert 'ppa_central_map_ratio{protocol="raw-raw",run_id="1",run_name="demo"} 0.1' in text
    assert 'ppa_central_map_ratio{protocol="raw-raw",run_id="2",run_name="demo"} 0.2' in text
    assert 'ppa_run_info{run_id="2",run_name="demo"} 1.0' in text


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
        query = urllib.parse.urlencode({"query": 'ppa_central_map_ratio{protocol="raw-raw"}'})
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
