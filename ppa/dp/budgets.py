"""Personalised budgets: how a site spends its own epsilon over a run.

Every site has its own budget (``privacy.site_budgets.<site>``, else ``privacy.epsilon_budget``)
and ``privacy.budget_policy`` says how it lives with it:

- ``stop``: every site trains with the same ``privacy.noise_multiplier``; a site whose next
  round would pass its budget refuses to train (``PrivacyBudgetExhaustedError``) and the server
  stops sampling it. A smaller budget means fewer rounds.
- ``noise``: before each round a site picks the smallest noise multiplier at which the rest of
  the run (this round and every later one up to ``federation.rounds``, each as planned now)
  composed with what its ledger already holds stays within its budget. A smaller budget
  means more noise, and the site takes part in every round. The multiplier is a function of
  public quantities only (budget, sample rate, steps, rounds, the ledger), so choosing it
  costs no privacy; the budget check still runs on the plan actually taken.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from ppa.dp.accounting import SGD, PrivacyLedger, Release
from ppa.dp.settings import BUDGET_POLICIES as POLICIES
from ppa.dp.settings import PrivacyConfigError

# Search interval of the noise multiplier and its relative precision.
_SIGMA_LOW, _SIGMA_HIGH, _SIGMA_RTOL = 0.2, 1000.0, 1e-3


def with_noise(plan: Sequence[Release], sigma: float) -> list[Release]:
    """`plan` with its DP-SGD releases at noise multiplier `sigma`."""
    return [
        Release(r.kind, r.round, sigma, r.rate, r.steps, r.run) if r.kind == SGD else r
        for r in plan
    ]


def remaining_plan(plan: Sequence[Release], rounds_left: int) -> list[Release]:
    """`plan` (one round's releases) repeated for `rounds_left` rounds, rounds numbered on."""
    first = plan[0].round if plan else 0
    return [
        Release(r.kind, first + i, r.noise, r.rate, r.steps, r.run)
        for i in range(max(int(rounds_left), 1))
        for r in plan
    ]


def calibrate_noise(
    ledger: PrivacyLedger,
    plan: Sequence[Release],
    *,
    rounds_left: int,
    budget: float,
    delta: float,
    site: str,
) -> float:
    """The smallest DP-SGD noise multiplier (to `_SIGMA_RTOL`) at which `ledger` plus
    `rounds_left` rounds of `plan` stays within `budget` at `delta`."""
    if not math.isfinite(budget):
        raise PrivacyConfigError(
            f"privacy.budget_policy=noise needs a finite budget for site {site} "
            "(privacy.epsilon_budget or privacy.site_budgets)"
        )
    future = remaining_plan(plan, rounds_left)

    def spent(sigma: float) -> float:
        with warnings.catch_warnings():
            # Probing very large noise: RDP's best order is then its smallest (a valid bound).
            warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
            return ledger.epsilon(delta, with_noise(future, sigma))

    if spent(_SIGMA_HIGH) > budget:
        raise PrivacyConfigError(
            f"site {site}: budget {budget:g} cannot cover {rounds_left} more round(s) even at "
            f"noise multiplier {_SIGMA_HIGH:g} (what is already spent and the prototype "
            f"releases take {spent(_SIGMA_HIGH):.3f}); raise the budget or lower "
            "privacy.prototype_noise / federation.rounds"
        )
    low, high = _SIGMA_LOW, _SIGMA_HIGH
    if spent(low) <= budget:
        return low
    while high - low > _SIGMA_RTOL * low:
        mid = math.sqrt(low * high)
        if spent(mid) <= budget:
            high = mid
        else:
            low = mid
    return high


def noise_for_round(
    policy: str,
    ledger: PrivacyLedger,
    plan: Sequence[Release],
    *,
    default_noise: float,
    server_round: int,
    total_rounds: int,
    budget: float,
    delta: float,
    site: str,
) -> float:
    """The DP-SGD noise multiplier a site uses this round under `policy`."""
    if policy not in POLICIES:
        raise PrivacyConfigError(f"privacy.budget_policy must be one of {POLICIES}, got {policy!r}")
    if policy == "stop":
        return float(default_noise)
    return calibrate_noise(
        ledger,
        plan,
        rounds_left=int(total_rounds) - int(server_round) + 1,
        budget=budget,
        delta=delta,
        site=site,
    )
