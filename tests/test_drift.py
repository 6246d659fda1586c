"""Client drift against the aggregate, on updates whose cosines and norms are known."""

from __future__ import annotations

import numpy as np
import pytest

from server.drift import client_drift, plot_drift


def test_client_drift_by_hand(tmp_path):
    current = {"w": np.zeros(2), "bn.running_mean": np.zeros(2), "stems.visible.w": np.zeros(1)}
    # Deltas of the shared part: (1, 0), (0, 1), (1, 1); aggregate (mean) = (2/3, 2/3).
    updates = [
        {
            "w": np.array([1.0, 0.0]),
            "bn.running_mean": np.array([9.0, 9.0]),
            "stems.visible.w": np.array([2.0]),
        },
        {
            "w": np.array([0.0, 1.0]),
            "bn.running_mean": np.array([-9.0, 0.0]),
            "stems.visible.w": np.array([-1.0]),
        },
        {
            "w": np.array([1.0, 1.0]),
            "bn.running_mean": np.array([0.0, 0.0]),
            "stems.infrared.w": np.array([1.0]),
        },
    ]
    aggregate = {
        "w": np.array([2 / 3, 2 / 3]),
        "bn.running_mean": np.zeros(2),
        "stems.visible.w": np.array([0.5]),
    }
    report = client_drift(
        ["a", "b", "c"],
        ["visible", "visible", "infrared"],
        updates,
        current,
        aggregate,
        ["w", "bn.running_mean"],
        {"visible": ["stems.visible.w"]},
    )
    s = 2**-0.5
    agg_norm = (8 / 9) ** 0.5
    assert report.sites["a"]["cosine"] == pytest.approx(s)
    assert report.sites["b"]["cosine"] == pytest.approx(s)
    assert report.sites["c"]["cosine"] == pytest.approx(1.0)
    assert report.sites["a"]["norm_ratio"] == pytest.approx(1 / agg_norm)
    assert report.sites["c"]["norm_ratio"] == pytest.approx(2**0.5 / agg_norm)
    # Stems: a's delta 2 and b's -1 against the visible aggregate 0.5.
    assert report.sites["a"]["stem_cosine"] == pytest.approx(1.0)
    assert report.sites["b"]["stem_cosine"] == pytest.approx(-1.0)
    assert report.modalities["visible"]["cosine"] == pytest.approx(s)
    assert report.modalities["visible"]["stem_cosine"] == pytest.approx(0.0)
    assert report.modalities["infrared"]["norm_ratio"] == pytest.approx(2**0.5 / agg_norm)
    assert "visible: cos 0.707" in report.summary()

    records = [{"round": 1, "drift": report.as_record()}, {"round": 2}]
    assert plot_drift(records, tmp_path / "drift.png").stat().st_size > 0
    assert plot_drift([{"round": 1}], tmp_path / "none.png") is None


def test_drift_gauges_export_every_site_and_modality():
    from prometheus_client import CollectorRegistry

    from server.drift import DriftGauges, DriftReport

    registry = CollectorRegistry()
    gauges = DriftGauges(registry)
    report = DriftReport(
        sites={
            "cam3": {"modality": "infrared", "cosine": 0.25, "norm_ratio": 3.0, "stem_cosine": 1.0}
        },
        modalities={"infrared": {"cosine": 0.25, "norm_ratio": 3.0, "stem_cosine": 1.0}},
    )
    gauges.record(report)
    site = {"site": "cam3", "modality": "infrared", "measure": "norm_ratio"}
    assert registry.get_sample_value("ppa_site_drift", site) == 3.0
    assert (
        registry.get_sample_value(
            "ppa_modality_drift", {"modality": "infrared", "measure": "cosine"}
        )
        == 0.25
    )
