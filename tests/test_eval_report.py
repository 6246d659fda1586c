"""EvaluationReport: headline numbers, tables and the JSON layout of metrics.json."""

from __future__ import annotations

import json

import pytest

from ppa.eval.report import EvaluationReport, GroupResult

NUMBERS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def group(rank1: float, mean_ap: float, trials: int = 2) -> GroupResult:
    mean = dict(zip(NUMBERS, (rank1, 0.6, 0.7, 0.8, mean_ap, 0.1), strict=True))
    return GroupResult(mean, [rank1, 0.55, 0.6], [{"trial": t, **mean} for t in range(trials)])


@pytest.fixture
def report() -> EvaluationReport:
    return EvaluationReport(
        dataset="synthetic_sysu",
        protocol="sysu",
        num_test_images=120,
        results={
            "raw-raw": {"all": group(0.3125, 0.25), "indoor": group(0.5, 0.375)},
            "anon-anon": {"all": group(0.125, 0.0625), "indoor": group(0.25, 0.125)},
        },
        extras={"checkpoint": "last.pt"},
    )


def test_headline_is_the_first_group(report: EvaluationReport) -> None:
    assert report.headline()["mAP"] == 0.25  # raw-raw, all-search
    assert report.headline("anon-anon")["rank1"] == 0.125
    assert report.headlines() == {
        "raw-raw": report.results["raw-raw"]["all"].mean,
        "anon-anon": report.results["anon-anon"]["all"].mean,
    }
    assert "cmc" not in report.headline()
    assert report.numbers()["raw-raw"]["indoor"]["mAP"] == 0.375


def test_table_prints_percent_per_protocol_and_group(report: EvaluationReport) -> None:
    lines = report.table().splitlines()
    assert lines[0].split()[:3] == ["protocol", "group", "R1"]
    assert len(lines) == 5
    assert lines[1].split() == ["raw-raw", "all", "31.25", "70.00", "80.00", "25.00", "10.00", "2"]


def test_json_layout_round_trips(report: EvaluationReport) -> None:
    payload = json.loads(json.dumps(report.to_json()))
    assert payload["checkpoint"] == "last.pt" and payload["num_test_images"] == 120
    entry = payload["results"]["raw-raw"]["all"]
    assert list(entry) == ["trials", "mean"]
    assert entry["mean"]["cmc"] == [0.3125, 0.55, 0.6] and entry["mean"]["mAP"] == 0.25
    assert len(entry["trials"]) == 2
    again = EvaluationReport.from_json(payload)
    assert again == report


def test_reranked_numbers_stay_apart(report: EvaluationReport) -> None:
    report.reranked = {"raw-raw": {"all": group(0.5, 0.4375)}}
    # Headlines and the protocol's table rows are the plain numbers.
    assert report.headline()["mAP"] == 0.25
    assert "reranked" not in report.numbers()
    text = report.table()
    plain, reranked = text.split("\n\nk-reciprocal re-ranking (reported apart):\n")
    assert plain.splitlines()[1].split()[5] == "25.00"
    assert reranked.splitlines()[1].split()[:6] == [
        "raw-raw",
        "all",
        "50.00",
        "70.00",
        "80.00",
        "43.75",
    ]
    payload = json.loads(json.dumps(report.to_json()))
    assert payload["reranked"]["raw-raw"]["all"]["mean"]["mAP"] == 0.4375
    assert payload["results"]["raw-raw"]["all"]["mean"]["mAP"] == 0.25
    again = EvaluationReport.from_json(payload)
    assert again == report and "reranked" not in again.extras
