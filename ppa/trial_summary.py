"""Mean and spread of evaluation reports over independently trained models.

RegDB's number is the mean over ten models, one per trial, each tested on its own trial
(`ppa.data.leakage` refuses anything else); the spread shows how much of a difference
between two methods the trials' variation could explain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

SUMMARISED = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def summarize_reports(reports: Mapping[int, dict]) -> dict:
    """``{trial: evaluate() report}`` -> per protocol and group: mean, sample std (ddof=1,
    0 for one trial), min, max of each metric over the trials, and the per-trial values."""
    if not reports:
        raise ValueError("summarize_reports needs at least one report")
    trials = sorted(reports)
    first = reports[trials[0]]["results"]
    summary: dict[str, dict] = {}
    for protocol, groups in first.items():
        for group in groups:
            per_metric: dict[str, dict] = {}
            for metric in SUMMARISED:
                values = [_value(reports[t], protocol, group, metric) for t in trials]
                per_metric[metric] = spread(values)
                per_metric[metric]["per_trial"] = dict(zip(trials, values, strict=True))
            summary.setdefault(protocol, {})[group] = per_metric
    return {"trials": trials, "results": summary}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for a single value), min and max."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("spread of no values")
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def _value(report: dict, protocol: str, group: str, metric: str) -> float:
    try:
        return float(report["results"][protocol][group]["mean"][metric])
    except KeyError as err:
        raise KeyError(
            f"report of {report.get('dataset', '?')} lacks results.{protocol}.{group}.mean.{metric}"
        ) from err
