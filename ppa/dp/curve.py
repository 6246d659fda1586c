"""The privacy-utility curve: per-site epsilon against raw-raw and anon-anon mAP.

One federated run per (epsilon, seed), all from the same public start: epsilon = inf is the
non-DP federation, every finite epsilon the DP fine-tuning recipe with that budget per site
(``privacy.budget_policy=noise``: each site's noise is set so the whole run spends exactly its
budget). Round 0 of every run evaluates the public start itself, so the table also says what
the public checkpoint alone scores. `ppa-privacy-curve` (ppa.cli.privacy_curve) launches
the runs; this module plans them and turns their ``history.json`` files into a table
(markdown) and a PNG.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOLS = ("raw-raw", "anon-anon")


@dataclass(frozen=True)
class CurvePoint:
    """One run of the curve: its budget per site (inf: no DP), seed and output folder."""

    epsilon: float
    seed: int
    output_dir: Path

    @property
    def label(self) -> str:
        return "inf" if math.isinf(self.epsilon) else f"{self.epsilon:g}"


def parse_epsilon(value: Any) -> float:
    """A configured epsilon: a positive number, or inf / "inf" / null for no DP."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("inf", "none")):
        return math.inf
    eps = float(value)
    if not eps > 0:
        raise ValueError(f"privacy_curve.epsilons: {value!r} is not a positive epsilon or inf")
    return eps


def plan_points(epsilons: Iterable[Any], seeds: Iterable[int], root: Path) -> list[CurvePoint]:
    points = []
    for value in epsilons:
        eps = parse_epsilon(value)
        for seed in seeds:
            label = "inf" if math.isinf(eps) else f"{eps:g}"
            points.append(CurvePoint(eps, int(seed), root / f"eps_{label}" / f"seed_{seed}"))
    return points


def point_overrides(
    point: CurvePoint, *, shared: Sequence[str], private: Sequence[str], public: Sequence[str]
) -> list[str]:
    """Hydra overrides of one run: `shared` + (`public` for inf, else `private` + budget)."""
    out = [*shared, f"seed={point.seed}", f"output_dir={point.output_dir}"]
    if math.isinf(point.epsilon):
        return [*out, *public]
    return [*out, *private, f"privacy.epsilon_budget={point.epsilon:g}"]


def read_history(output_dir: str | os.PathLike) -> list[dict]:
    path = Path(output_dir) / "history.json"
    if not path.is_file():
        raise FileNotFoundError(f"no history.json in {output_dir}: the run did not finish")
    return list(json.loads(path.read_text())["rounds"])


def run_numbers(history: Sequence[dict]) -> dict[str, Any]:
    """mAP per protocol at round 0 (the start) and at the last evaluated round, and the
    largest epsilon any site reported."""
    evaluated = [r for r in history if r.get("central")]
    if not evaluated:
        raise ValueError("the run has no central evaluation")
    first = next((r for r in evaluated if r["round"] == 0), None)
    last = evaluated[-1]
    eps = [
        float(s["epsilon"])
        for r in history
        for s in (r.get("sites") or {}).values()
        if isinstance(s, dict) and "epsilon" in s
    ]
    return {
        "round": int(last["round"]),
        "start": None if first is None else {p: first["central"][p]["mAP"] for p in PROTOCOLS},
        "final": {p: last["central"][p]["mAP"] for p in PROTOCOLS},
        "epsilon_spent": max(eps) if eps else None,
    }


def summarise(points: Sequence[CurvePoint]) -> list[dict[str, Any]]:
    """One row per epsilon: mean and std over seeds of the final mAP, the start's mAP, the
    fraction of the non-DP mAP (raw-raw), the largest epsilon spent."""
    by_eps: dict[float, list[dict]] = {}
    for point in points:
        by_eps.setdefault(point.epsilon, []).append(run_numbers(read_history(point.output_dir)))
    rows = []
    reference = by_eps.get(math.inf)
    ref_raw = (
        None if reference is None else float(np.mean([r["final"]["raw-raw"] for r in reference]))
    )
    for eps in sorted(by_eps):
        runs = by_eps[eps]
        row: dict[str, Any] = {"epsilon": eps, "seeds": len(runs), "round": runs[0]["round"]}
        for p in PROTOCOLS:
            finals = [r["final"][p] for r in runs]
            row[p] = (float(np.mean(finals)), float(np.std(finals)))
            starts = [r["start"][p] for r in runs if r["start"] is not None]
            row[f"start {p}"] = float(np.mean(starts)) if starts else None
        spent = [r["epsilon_spent"] for r in runs if r["epsilon_spent"] is not None]
        row["epsilon_spent"] = max(spent) if spent else None
        row["of non-DP"] = None if not ref_raw else row["raw-raw"][0] / ref_raw
        rows.append(row)
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| epsilon per site | spent (max over sites) | seeds | round | raw-raw mAP | "
        "anon-anon mAP | of non-DP raw-raw | public start raw-raw / anon-anon |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eps = "inf (no DP)" if math.isinf(r["epsilon"]) else f"{r['epsilon']:g}"
        spent = "-" if r["epsilon_spent"] is None else f"{r['epsilon_spent']:.2f}"
        cells = [
            f"{_pct(r[p][0])} ± {_pct(r[p][1])}" if r["seeds"] > 1 else _pct(r[p][0])
            for p in PROTOCOLS
        ]
        share = "-" if r["of non-DP"] is None else f"{100 * r['of non-DP']:.0f} %"
        start = f"{_pct(r['start raw-raw'])} / {_pct(r['start anon-anon'])}"
        lines.append(
            f"| {eps} | {spent} | {r['seeds']} | {r['round']} | {cells[0]} | {cells[1]} | "
            f"{share} | {start} |"
        )
    return "\n".join(lines) + "\n"


def plot_curve(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """mAP against epsilon (log axis; inf drawn at the right edge), with the public start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [r["epsilon"] for r in rows if math.isfinite(r["epsilon"])]
    inf_x = 2 * max(finite) if finite else 1.0
    xs = [inf_x if math.isinf(r["epsilon"]) else r["epsilon"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for p, marker in zip(PROTOCOLS, ("o", "s"), strict=True):
        means = [100 * r[p][0] for r in rows]
        stds = [100 * r[p][1] for r in rows]
        ax.errorbar(xs, means, yerr=stds, marker=marker, capsize=3, label=f"{p} (federated)")
        starts = [r[f"start {p}"] for r in rows if r[f"start {p}"] is not None]
        if starts:
            ax.axhline(
                100 * float(np.mean(starts)),
                ls="--",
                lw=1,
                alpha=0.6,
                label=f"{p}, public start alone",
            )
    ax.set_xscale("log")
    ax.set_xticks(xs, [("inf" if math.isinf(r["epsilon"]) else f"{r['epsilon']:g}") for r in rows])
    ax.set_xlabel("epsilon per site (delta 1e-5)")
    ax.set_ylabel("mAP (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
