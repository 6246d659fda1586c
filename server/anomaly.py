"""Per-round drift / anomaly detection over site updates of the shared parts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# MAD -> standard deviation for normally distributed norms.
MAD_TO_STD = 1.4826


@dataclass
class AnomalyReport:
    """Per-site scores and the sites flagged this round."""

    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    flagged: list[str] = field(default_factory=list)


def detect_anomalies(
    sites: Sequence[str],
    updates: Sequence[Mapping[str, np.ndarray]],
    current: Mapping[str, np.ndarray],
    keys: Sequence[str],
    *,
    threshold: float | None = 3.0,
    min_spread: float = 0.1,
) -> AnomalyReport:
    """Flag sites whose update (update - current global) is far from the others'.

    Two robust scores per site: the norm's z-score against the median/MAD of all norms (a
    scaled update stands out), and the cosine between the site's delta and the
    coordinate-wise median delta (a sign-flipped update points away; the median keeps one
    huge update from defining the reference direction). A site is flagged when its norm
    z-score exceeds `threshold` or its cosine is negative. Needs three sites; fewer give
    scores but no flags.

    The z-score's spread is at least `min_spread` x the median norm: when honest sites agree
    closely the MAD alone is tiny, and a site whose update is 10 % longer (more data, another
    modality) would read as an outlier. With the defaults a norm under 1.3 x the median is never
    flagged; a scaled attack is tens of times longer.

    Works key by key, so memory is (sites x largest array), never (sites x model).
    """
    report = AnomalyReport()
    n = len(sites)
    if n == 0:
        return report
    sq_norms = np.zeros(n)
    dots = np.zeros(n)  # delta_i . median direction
    direction_sq = 0.0
    for k in keys:
        ref = np.asarray(current[k], np.float64).ravel()
        deltas = np.stack([np.asarray(u[k], np.float64).ravel() - ref for u in updates])
        median = np.median(deltas, axis=0)
        sq_norms += (deltas**2).sum(axis=1)
        dots += deltas @ median
        direction_sq += float(median @ median)
    norms = np.sqrt(sq_norms)
    median_norm = float(np.median(norms))
    mad = float(np.median(np.abs(norms - median_norm)))
    scale = max(MAD_TO_STD * mad, min_spread * median_norm) + 1e-12
    direction_norm = direction_sq**0.5
    for i, site in enumerate(sites):
        denom = direction_norm * float(norms[i])
        cosine = float(dots[i] / denom) if denom > 0 else 1.0
        z = float((norms[i] - median_norm) / scale)
        report.scores[site] = {"norm": float(norms[i]), "norm_z": z, "cosine": cosine}
        if threshold is not None and n >= 3 and (z > threshold or cosine < 0.0):
            report.flagged.append(site)
    return report
