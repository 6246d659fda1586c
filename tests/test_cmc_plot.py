"""The CMC plot of ppa-evaluate: ranks are whole numbers on the axis."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ppa.cli.evaluate import plot_cmc
from ppa.eval.report import EvaluationReport, GroupResult


def test_cmc_ticks_are_integer_ranks(tmp_path: Path, monkeypatch) -> None:
    cmc = [0.2, 0.35, 0.5, 0.6, 0.7]
    report = EvaluationReport(
        dataset="synthetic_sysu",
        protocol="sysu",
        num_test_images=10,
        results={"raw-raw": {"all": GroupResult({"rank1": 0.2}, cmc, [])}},
    )
    seen = {}
    close = plt.close

    def keep_ticks(fig=None):
        seen["ticks"] = list(fig.axes[0].get_xticks())
        close(fig)

    monkeypatch.setattr(plt, "close", keep_ticks)
    path = plot_cmc(report, tmp_path / "cmc.png")
    assert path.is_file()
    ticks = [t for t in seen["ticks"] if 1 <= t <= 5]
    assert ticks and all(float(t).is_integer() for t in ticks), seen["ticks"]
