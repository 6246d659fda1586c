"""Client drift per round: how far each site's update points away from the aggregate.

For site i with update w_i of the current global model w, its delta is d_i = w_i - w; the
aggregate's delta is D = w_agg - w (before any server optimiser step). Per site:

- ``cosine``: cos(d_i, D) over the shared parts (trunk, GeM, BNNeck, classifier): 1 when the
  site moved the model where the federation moved it, 0 when orthogonal, < 0 against it;
- ``norm_ratio``: |d_i| / |D|: how much longer the site's step is than the aggregate's. With
  drifting sites the aggregate is shorter than its parts (their components cancel), so a
  ratio far above 1 means sites that pull in different directions;
- ``stem_cosine``: cos of the site's stem delta with its modality's aggregated stem delta.

Per modality the report gives the means over that modality's sites: single-modality sites of
one kind drifting together against the other kind is what the federation of camera sites
suffers from. Normalisation running statistics are left out (they are averages, not steps).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
DRIFT_KEYS = ("cosine", "norm_ratio", "stem_cosine")


def _steps(keys: Sequence[str]) -> list[str]:
    return [k for k in keys if not k.endswith(_STATISTICS)]


def _dot_norms(
    update: Mapping[str, np.ndarray],
    aggregate: Mapping[str, np.ndarray],
    current: Mapping[str, np.ndarray],
    keys: Sequence[str],
) -> tuple[float, float, float]:
    """(d . D, |d|^2, |D|^2) over `keys`, key by key (no flattening of the whole model)."""
    dot = own = agg = 0.0
    for k in keys:
        ref = np.asarray(current[k], np.float64)
        d = np.asarray(update[k], np.float64) - ref
        big = np.asarray(aggregate[k], np.float64) - ref
        dot += float((d * big).sum())
        own += float((d * d).sum())
        agg += float((big * big).sum())
    return dot, own, agg


def _cosine(dot: float, a: float, b: float) -> float:
    denom = (a * b) ** 0.5
    return dot / denom if denom > 0 else 0.0


@dataclass
class DriftReport:
    """Per-site and per-modality drift of one round (see the module docstring)."""

    sites: dict[str, dict[str, float | str]] = field(default_factory=dict)
    modalities: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_record(self) -> dict:
        return {"sites": self.sites, "modalities": self.modalities}

    def summary(self) -> str:
        return " | ".join(
            f"{m}: cos {v['cosine']:.3f} norm ratio {v['norm_ratio']:.2f} "
            f"stem cos {v['stem_cosine']:.3f}"
            for m, v in self.modalities.items()
        )


def client_drift(
    sites: Sequence[str],
    modalities: Sequence[str],
    updates: Sequence[Mapping[str, np.ndarray]],
    current: Mapping[str, np.ndarray],
    aggregate: Mapping[str, np.ndarray],
    shared_keys: Sequence[str],
    stem_keys: Mapping[str, Sequence[str]],
) -> DriftReport:
    """Drift of each site's update against the aggregate; `stem_keys[modality]` names that
    modality's stem (and offset) arrays, aggregated within the modality."""
    report = DriftReport()
    shared = _steps(shared_keys)
    for site, modality, update in zip(sites, modalities, updates, strict=True):
        dot, own, agg = _dot_norms(update, aggregate, current, shared)
        stem = _steps(stem_keys.get(modality, ()))
        sdot, sown, sagg = _dot_norms(update, aggregate, current, stem)
        report.sites[site] = {
            "modality": modality,
            "cosine": _cosine(dot, own, agg),
            "norm_ratio": (own / agg) ** 0.5 if agg > 0 else 0.0,
            "stem_cosine": _cosine(sdot, sown, sagg),
        }
    for modality in sorted(set(modalities)):
        rows = [v for v in report.sites.values() if v["modality"] == modality]
        report.modalities[modality] = {
            k: float(np.mean([float(r[k]) for r in rows])) for k in DRIFT_KEYS
        }
    return report


def plot_drift(records: Sequence[Mapping], path: str | Path, title: str = "") -> Path | None:
    """Per-modality cosine and norm ratio against the round (history records with "drift")."""
    rows = [r for r in records if r.get("drift", {}).get("modalities")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities = sorted({m for r in rows for m in r["drift"]["modalities"]})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "cosine", "cosine(site update, aggregate)"),
        (axes[1], "norm_ratio", "|site update| / |aggregate|"),
    ):
        for m in modalities:
            pts = [
                (r["round"], r["drift"]["modalities"][m][key])
                for r in rows
                if m in r["drift"]["modalities"]
            ]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "client drift of the shared parts, mean over each modality's sites")
    fig.tight_layout()
    target = Path(path)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


class DriftGauges:
    """Prometheus gauges of the drift, on the run's registry."""

    def __init__(self, registry) -> None:
        from prometheus_client import Gauge

        self.site = Gauge(
            "ppa_site_drift",
            "Drift of a site's update against the aggregate (cosine, norm_ratio, stem_cosine)",
            ["site", "modality", "measure"],
            registry=registry,
        )
        self.modality = Gauge(
            "ppa_modality_drift",
            "Mean drift of a modality's sites (cosine, norm_ratio, stem_cosine)",
            ["modality", "measure"],
            registry=registry,
        )

    def record(self, report: DriftReport) -> None:
        for site, values in report.sites.items():
            for k in DRIFT_KEYS:
                self.site.labels(site=site, modality=str(values["modality"]), measure=k).set(
                    float(values[k])
                )
        for modality, values in report.modalities.items():
            for k in DRIFT_KEYS:
                self.modality.labels(modality=modality, measure=k).set(values[k])
