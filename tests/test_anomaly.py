"""The update anomaly scores of server/anomaly.py against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from server.anomaly import MAD_TO_STD, detect_anomalies

CURRENT = {"w": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}
KEYS = ["w", "b"]


def along(norms: list[float], direction=(1.0, 0.0)) -> list[dict[str, np.ndarray]]:
    """Updates of the given norms, all along one direction of `w` (`b` unchanged)."""
    unit = np.asarray(direction, np.float64) / np.linalg.norm(direction)
    return [{"w": (n * unit).astype(np.float32), "b": np.zeros(1, np.float32)} for n in norms]


def names(n: int) -> list[str]:
    return [f"cam{i + 1}" for i in range(n)]


def test_a_slightly_longer_honest_update_is_not_flagged_beside_a_scaled_one() -> None:
    # Norms 1, 1, 1.02, 1.1, 0.98 and an attacker at 50. Median (1 + 1.02) / 2 = 1.01;
    # absolute deviations .01 .01 .01 .09 .03 48.99 -> MAD (.01 + .03) / 2 = .02.
    norms = [1.0, 1.0, 1.02, 1.1, 0.98, 50.0]
    report = detect_anomalies(names(6), along(norms), CURRENT, KEYS)
    # The spread is max(1.4826 x .02, 0.1 x 1.01) = .101: cam4 scores .09 / .101.
    assert report.scores["cam4"]["norm_z"] == pytest.approx(0.09 / 0.101, rel=1e-4)
    assert report.scores["cam6"]["norm_z"] == pytest.approx(48.99 / 0.101, rel=1e-4)
    assert report.flagged == ["cam6"]
    # The MAD alone (no floor) would call cam4 an outlier: .09 / (1.4826 x .02) = 3.04.
    bare = detect_anomalies(names(6), along(norms), CURRENT, KEYS, min_spread=0.0)
    assert bare.scores["cam4"]["norm_z"] == pytest.approx(0.09 / (MAD_TO_STD * 0.02), rel=1e-4)
    assert bare.flagged == ["cam4", "cam6"]


@pytest.mark.parametrize(("longest", "flagged"), [(1.25, False), (1.4, True)])
def test_the_floor_flags_a_norm_beyond_one_and_three_tenths_of_the_median(
    longest: float, flagged: bool
) -> None:
    # Four identical norms: MAD 0, so the spread is the floor, 0.1 x median 1.
    report = detect_anomalies(names(5), along([1.0, 1.0, 1.0, 1.0, longest]), CURRENT, KEYS)
    assert report.scores["cam5"]["norm_z"] == pytest.approx((longest - 1.0) / 0.1, rel=1e-4)
    assert report.flagged == (["cam5"] if flagged else [])


def test_a_sign_flipped_update_is_flagged_by_its_cosine() -> None:
    updates = along([1.0, 1.1, 0.9, 1.0]) + along([1.0], direction=(-1.0, 0.0))
    report = detect_anomalies(names(5), updates, CURRENT, KEYS)
    assert report.scores["cam5"]["cosine"] == pytest.approx(-1.0)
    assert report.scores["cam1"]["cosine"] == pytest.approx(1.0)
    assert report.flagged == ["cam5"]


def test_two_sites_are_scored_but_never_flagged() -> None:
    # Median delta (1 - 3) / 2 = -1 along w: cam1 points away from it, yet with two sites
    # there is no majority to say which one is wrong.
    updates = along([1.0]) + along([3.0], direction=(-1.0, 0.0))
    report = detect_anomalies(names(2), updates, CURRENT, KEYS)
    assert report.scores["cam1"]["cosine"] == pytest.approx(-1.0)
    assert report.flagged == []
