"""The comparison table: mean and spread over seeds per side and budget, and their ratio.

A *curve* is one training run's evaluations: epoch -> protocol -> {"mAP", "rank1", "mINP"}
(fractions in [0, 1]). The table takes each run's last point (its budget); the ratio is
federated mean / centralised mean, and its spread comes from the per-seed ratios.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SIDES = ("federated", "centralised")
METRICS = ("mAP", "rank1", "mINP")

Curve = dict[int, dict[str, dict[str, float]]]


@dataclass
class RunResult:
    side: str  # federated | centralised
    budget: int  # epochs
    seed: int
    curve: Curve = field(default_factory=dict)
    command: str = ""

    def final(self) -> dict[str, dict[str, float]]:
        if not self.curve:
            raise ValueError(f"{self.side} run, {self.budget} epochs, seed {self.seed}: no result")
        return self.curve[max(self.curve)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def summarise(results: Sequence[RunResult], protocols: Sequence[str]) -> dict:
    """{"budgets": {budget: {protocol: {side: {metric: [mean, std]}, "ratio": {...}}}}}."""
    table: dict = {"budgets": {}}
    for budget in sorted({r.budget for r in results}):
        rows = [r for r in results if r.budget == budget]
        seeds = sorted({r.seed for r in rows})
        entry: dict = {"seeds": seeds}
        for protocol in protocols:
            cell: dict = {}
            finals = {
                side: {r.seed: r.final()[protocol] for r in rows if r.side == side}
                for side in SIDES
            }
            for side in SIDES:
                cell[side] = {
                    m: list(mean_std([v[m] for v in finals[side].values()])) for m in METRICS
                }
            paired = sorted(set(finals["federated"]) & set(finals["centralised"]))
            cell["ratio"] = {}
            for m in METRICS:
                fed, cen = cell["federated"][m][0], cell["centralised"][m][0]
                per_seed = [
                    finals["federated"][s][m] / finals["centralised"][s][m]
                    for s in paired
                    if finals["centralised"][s][m] > 0
                ]
                cell["ratio"][m] = {
                    "of_means": fed / cen if cen > 0 else math.nan,
                    "per_seed": list(mean_std(per_seed)),
                }
            entry[protocol] = cell
        table["budgets"][str(budget)] = entry
    return table


def _pm(values: Sequence[float], scale: float = 100.0) -> str:
    mean, std = values
    return f"{scale * mean:.2f} ± {scale * std:.2f}"


def markdown(table: Mapping, protocols: Sequence[str], title: str = "") -> str:
    """The table as Markdown: one row per budget and side, mAP / Rank-1 / mINP in %."""
    lines = [f"## {title}", ""] if title else []
    header = "| epochs | side | " + " | ".join(f"{p} mAP / R1 / mINP" for p in protocols) + " |"
    lines += [header, "|" + "---|" * (2 + len(protocols))]
    for budget, entry in table["budgets"].items():
        for side in SIDES:
            cells = [" / ".join(_pm(entry[p][side][m]) for m in METRICS) for p in protocols]
            lines.append(f"| {budget} | {side} | " + " | ".join(cells) + " |")
        ratios = [
            " / ".join(f"{entry[p]['ratio'][m]['of_means']:.2f}" for m in METRICS)
            for p in protocols
        ]
        lines.append(f"| {budget} | **federated / centralised** | " + " | ".join(ratios) + " |")
    seeds = sorted({s for e in table["budgets"].values() for s in e["seeds"]})
    lines += ["", f"Mean ± sample standard deviation over seeds {seeds}; ratio of the means."]
    return "\n".join(lines) + "\n"


def write_table(
    results: Sequence[RunResult], protocols: Sequence[str], out_dir: str | Path, title: str = ""
) -> dict[str, Path]:
    """comparison.json (table + every run's curve and command), comparison.md, comparison.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = summarise(results, protocols)
    payload = {
        "title": title,
        "protocols": list(protocols),
        "table": table,
        "runs": [
            {
                "side": r.side,
                "budget": r.budget,
                "seed": r.seed,
                "command": r.command,
                "curve": {str(e): v for e, v in sorted(r.curve.items())},
            }
            for r in results
        ],
    }
    paths = {"json": out / "comparison.json", "markdown": out / "comparison.md"}
    paths["json"].write_text(json.dumps(payload, indent=2))
    paths["markdown"].write_text(markdown(table, protocols, title))
    paths["png"] = plot_curves(results, protocols[0], out / "comparison.png", title)
    return paths


def plot_curves(
    results: Sequence[RunResult], protocol: str, path: str | Path, title: str = ""
) -> Path:
    """mAP against epochs, one panel per budget: each side's seeds thin, their mean bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r.budget for r in results})
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 4), squeeze=False)
    colours = {"federated": "tab:blue", "centralised": "tab:orange"}
    for ax, budget in zip(axes[0], budgets, strict=True):
        for side in SIDES:
            runs = [r for r in results if r.budget == budget and r.side == side]
            for r in runs:
                xs = sorted(r.curve)
                ax.plot(
                    xs,
                    [100 * r.curve[x][protocol]["mAP"] for x in xs],
                    color=colours[side],
                    alpha=0.3,
                    lw=1,
                )
            common = sorted(set.intersection(*(set(r.curve) for r in runs))) if runs else []
            if common:
                mean = [
                    100 * sum(r.curve[x][protocol]["mAP"] for r in runs) / len(runs) for x in common
                ]
                ax.plot(common, mean, color=colours[side], lw=2.5, marker="o", label=side)
        ax.set_title(f"{budget} epochs")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{protocol} mAP (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or f"federated vs centralised, {protocol}")
    fig.tight_layout()
    target = Path(path)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
