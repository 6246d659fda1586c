"""What `evaluate` returns: numbers per privacy protocol and test group, typed.

A group is a SYSU-MM01 mode (all / indoor) or a RegDB direction; the first group evaluated is
the headline one (SYSU all-search, RegDB visible->thermal). `to_json` / `from_json` keep the
JSON layout of `metrics.json` and the server's per-round evaluation files:
``results[protocol][group] = {"trials": [...], "mean": {..., "cmc": [...]}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GroupResult:
    """One test group under one privacy protocol: the mean over trials, each trial, mean CMC."""

    mean: dict[str, float]  # rank1, rank5, rank10, rank20, mAP, mINP
    cmc: list[float]
    trials: list[dict[str, float]]

    def to_json(self) -> dict[str, Any]:
        return {"trials": self.trials, "mean": {**self.mean, "cmc": self.cmc}}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> GroupResult:
        mean = {k: float(v) for k, v in entry["mean"].items() if k != "cmc"}
        return cls(mean, list(entry["mean"].get("cmc", [])), list(entry.get("trials", [])))


@dataclass
class EvaluationReport:
    """Every number of one evaluation; `extras` holds what a caller adds (checkpoint, ...)."""

    dataset: str
    protocol: str  # the dataset's protocol family (sysu / regdb)
    num_test_images: int
    results: dict[str, dict[str, GroupResult]]  # privacy protocol -> group -> numbers
    extras: dict[str, Any] = field(default_factory=dict)
    # The same layout on k-reciprocal re-ranked distances (eval.rerank); never in `results`,
    # so headlines and tables of the protocol are the plain numbers.
    reranked: dict[str, dict[str, GroupResult]] | None = None

    def headline(self, protocol: str | None = None) -> dict[str, float]:
        """The first group's mean numbers for a privacy protocol (default: the first one)."""
        groups = self.results[protocol or next(iter(self.results))]
        return dict(next(iter(groups.values())).mean)

    def headlines(self) -> dict[str, dict[str, float]]:
        """privacy protocol -> the first group's mean numbers."""
        return {protocol: self.headline(protocol) for protocol in self.results}

    def numbers(self) -> dict[str, dict[str, dict[str, float]]]:
        """privacy protocol -> group -> mean numbers (no CMC curves)."""
        return {
            protocol: {group: dict(entry.mean) for group, entry in groups.items()}
            for protocol, groups in self.results.items()
        }

    def table(self) -> str:
        """A fixed-width text table: one line per protocol and group, numbers in percent;
        the re-ranked numbers, when measured, in a second table below it."""
        text = _table(self.results)
        if self.reranked is not None:
            text += "\n\nk-reciprocal re-ranking (reported apart):\n" + _table(self.reranked)
        return text

    def to_json(self) -> dict[str, Any]:
        payload = {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "num_test_images": self.num_test_images,
            "results": _results_json(self.results),
            **self.extras,
        }
        if self.reranked is not None:
            payload["reranked"] = _results_json(self.reranked)
        return payload

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> EvaluationReport:
        core = ("dataset", "protocol", "num_test_images", "results", "reranked")
        reranked = payload.get("reranked")
        return cls(
            dataset=str(payload["dataset"]),
            protocol=str(payload["protocol"]),
            num_test_images=int(payload["num_test_images"]),
            results=_results_from_json(payload["results"]),
            extras={k: v for k, v in payload.items() if k not in core},
            reranked=None if reranked is None else _results_from_json(reranked),
        )


Results = Mapping[str, Mapping[str, GroupResult]]


def _table(results: Results) -> str:
    lines = [
        f"{'protocol':10s} {'group':20s} {'R1':>7s} {'R10':>7s} {'R20':>7s} "
        f"{'mAP':>7s} {'mINP':>7s}  trials"
    ]
    for protocol, groups in results.items():
        for group, entry in groups.items():
            m = entry.mean
            lines.append(
                f"{protocol:10s} {group:20s} {100 * m['rank1']:7.2f} "
                f"{100 * m['rank10']:7.2f} {100 * m['rank20']:7.2f} "
                f"{100 * m['mAP']:7.2f} {100 * m['mINP']:7.2f}  "
                f"{len(entry.trials)}"
            )
    return "\n".join(lines)


def _results_json(results: Results) -> dict[str, Any]:
    return {
        protocol: {group: entry.to_json() for group, entry in groups.items()}
        for protocol, groups in results.items()
    }


def _results_from_json(payload: Mapping[str, Any]) -> dict[str, dict[str, GroupResult]]:
    return {
        protocol: {group: GroupResult.from_json(e) for group, e in groups.items()}
        for protocol, groups in payload.items()
    }
