"""A site's privacy ledger: every release of its data, composed with opacus's accountants.

Each entry is one Gaussian mechanism applied `steps` times at Poisson sample rate `rate` with
noise multiplier `noise` (noise std / L2 sensitivity): DP-SGD steps of a round, or a round's
prototype release (rate 1, one step). opacus's RDP/PRV accountants compose a history of such
(noise, rate, steps) triples; the ledger is that history plus the round and kind of each entry,
kept as plain lists so it round-trips through a Flower ConfigRecord in ``context.state``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ppa.dp.settings import ACCOUNTANTS, PrivacySettings

logger = logging.getLogger(__name__)

SGD = "sgd"
PROTOTYPES = "prototypes"
KINDS = (SGD, PROTOTYPES)
_COLUMNS = ("kind", "round", "noise", "rate", "steps")


class PrivacyBudgetExhaustedError(RuntimeError):
    """A site whose next release would take it past its epsilon budget: it does not train."""

    def __init__(self, site: str, spent: float, projected: float, budget: float, delta: float):
        self.site, self.spent, self.projected, self.budget = site, spent, projected, budget
        super().__init__(
            f"site {site}: DP budget exhausted, not training this round (epsilon spent "
            f"{spent:.4f}, this round would reach {projected:.4f} > budget {budget:.4f} at "
            f"delta={delta:g})"
        )


class LedgerError(ValueError):
    """A stored ledger that cannot be read back (wrong columns, lengths or values)."""


@dataclass(frozen=True)
class Release:
    """One accounted mechanism: `steps` Gaussian steps at (noise, rate) in `round` of `run`.

    `run` names the federated run (Flower's run id): a ledger that outlives one run (a file at
    the site) tells a resumed run's round 3 from the first run's round 3.
    """

    kind: str
    round: int
    noise: float
    rate: float
    steps: int
    run: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LedgerError(f"release kind must be one of {KINDS}, got {self.kind!r}")
        if not (self.noise > 0 and 0 < self.rate <= 1 and self.steps >= 0):
            raise LedgerError(f"invalid release {self}: need noise > 0, 0 < rate <= 1, steps >= 0")


def epsilon_of(releases: Iterable[Release], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` of the composition of `releases` (opacus's accountant)."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    # Releases of one mechanism (noise, rate) compose into one entry of their summed steps:
    # both accountants compose a history entry's steps exactly like separate entries, and
    # the cost grows with the entries (a ledger repeats one mechanism every round, and the
    # budget calibration evaluates a whole plan per bisection step).
    steps: dict[tuple[float, float], int] = {}
    for r in releases:
        if r.steps > 0:
            steps[(r.noise, r.rate)] = steps.get((r.noise, r.rate), 0) + r.steps
    history = [(noise, rate, count) for (noise, rate), count in steps.items()]
    if not history:
        return 0.0
    from opacus.accountants import create_accountant  # lazily: see ppa.dp.sgd

    acc = create_accountant(accountant)
    acc.history = history
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        # RDP warns when the best order is its largest one (the bound is valid, if a little
        # loose); PRV takes log(1 - q) = -inf for a rate-1 release (handled, but it warns).
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(acc.get_epsilon(delta=delta))


class PrivacyLedger:
    """All releases of one site so far, and the epsilon they add up to."""

    def __init__(self, releases: Iterable[Release] = (), accountant: str = "rdp"):
        self.releases: list[Release] = list(releases)
        self.accountant = accountant

    def __len__(self) -> int:
        return len(self.releases)

    def epsilon(self, delta: float, planned: Sequence[Release] = ()) -> float:
        """Epsilon spent so far, or (with `planned`) after those releases too."""
        return epsilon_of([*self.releases, *planned], delta, self.accountant)

    def record(self, releases: Iterable[Release]) -> None:
        self.releases.extend(releases)

    def rounds(self, run: str = "") -> list[int]:
        """Rounds of `run` already accounted."""
        return sorted({r.round for r in self.releases if r.run == run})

    def check_budget(
        self, site: str, planned: Sequence[Release], budget: float, delta: float
    ) -> float:
        """Projected epsilon after `planned`; raises PrivacyBudgetExhaustedError above `budget`."""
        spent = self.epsilon(delta)
        projected = self.epsilon(delta, planned)
        if math.isfinite(budget) and projected > budget:
            raise PrivacyBudgetExhaustedError(site, spent, projected, budget, delta)
        return projected

    # Storage (Flower ConfigRecord values: lists of one scalar type) -------------------------
    def to_columns(self) -> dict[str, list]:
        return {
            "kind": [r.kind for r in self.releases],
            "round": [int(r.round) for r in self.releases],
            "noise": [float(r.noise) for r in self.releases],
            "rate": [float(r.rate) for r in self.releases],
            "steps": [int(r.steps) for r in self.releases],
            "run": [str(r.run) for r in self.releases],
        }

    @classmethod
    def from_columns(
        cls, columns: Mapping[str, Sequence], accountant: str = "rdp", source: str = "ledger"
    ) -> PrivacyLedger:
        missing = [c for c in _COLUMNS if c not in columns]
        if missing:
            raise LedgerError(f"{source}: missing columns {missing}")
        lengths = {c: len(columns[c]) for c in _COLUMNS}
        if len(set(lengths.values())) != 1:
            raise LedgerError(f"{source}: columns of different lengths {lengths}")
        runs = list(columns.get("run", [""] * lengths["kind"]))
        if len(runs) != lengths["kind"]:
            raise LedgerError(
                f"{source}: column run has {len(runs)} entries, not {lengths['kind']}"
            )
        releases = [
            Release(str(k), int(r), float(n), float(q), int(s), str(run))
            for (k, r, n, q, s), run in zip(
                zip(*(columns[c] for c in _COLUMNS), strict=True), runs, strict=True
            )
        ]
        return cls(releases, accountant)


def release_noise_multiplier(prototype_noise: float) -> float:
    """Noise multiplier of a prototype release w.r.t. its joint L2 sensitivity sqrt(2)
    (sums noised at prototype_noise * clip, counts at prototype_noise: ppa.dp.prototypes)."""
    return float(prototype_noise) / math.sqrt(2.0)


def plan_round(
    settings: PrivacySettings,
    server_round: int,
    *,
    sample_rate: float,
    steps: int,
    prototypes: bool,
    run: str = "",
) -> list[Release]:
    """The releases one round (or central epoch) makes: `steps` DP-SGD steps at
    `sample_rate`, plus one prototype release when `prototypes`."""
    planned = [Release(SGD, server_round, settings.noise_multiplier, sample_rate, steps, run)]
    if prototypes:
        planned.append(
            Release(
                PROTOTYPES,
                server_round,
                release_noise_multiplier(settings.prototype_noise),
                1.0,
                1,
                run,
            )
        )
    return planned
