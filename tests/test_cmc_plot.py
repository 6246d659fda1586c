"""The CMC plot of scripts/evaluate.py: ranks are whole numbers on the axis."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from conftest import load_script


def test_cmc_ticks_are_integer_ranks(tmp_path: Path, monkeypatch) -> None:
    evaluate = load_script("evaluate")
    report = {
        "dataset": "synthetic_sysu",
        "results": {"raw-raw": {"all": {"mean": {"cmc": [0.2, 0.35, 0.5, 0.6, 0.7]}}}},
    }
    seen = {}
    close = plt.close

    def keep_ticks(fig=None):
        seen["ticks"] = list(fig.axes[0].get_xticks())
        close(fig)

    monkeypatch.setattr(plt, "close", keep_ticks)
    path = evaluate.plot_cmc(report, tmp_path / "cmc.png")
    assert path.is_file()
    ticks = [t for t in seen["ticks"] if 1 <= t <= 5]
    assert ticks and all(float(t).is_integer() for t in ticks), seen["ticks"]
