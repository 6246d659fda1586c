"""Personalised budgets (ppa/dp/budgets.py): each site meets its own epsilon, by stopping or
by more noise; the ledger against opacus's accountant; the server stops sampling a site that
reported an exhausted budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flower_messages import reply_metadata
from flwr.app import Error, Message, MessageType
from flwr.app import RecordDict as FlwrRecordDict
from opacus.accountants import RDPAccountant

from client.private import BUDGET_EXHAUSTED_CODE
from ppa.config import load_config
from ppa.dp import (
    PROTOTYPES,
    SGD,
    PrivacyBudgetExhaustedError,
    PrivacyConfigError,
    PrivacyLedger,
    PrivacySettings,
    Release,
    plan_round,
    release_noise_multiplier,
)
from ppa.dp.budgets import calibrate_noise, noise_for_round, with_noise
from ppa.model import create_model
from ppa.wire import global_keys
from server.strategy import ModalityAwareFedAvg

from conftest import tiny_overrides

DELTA = 1e-5
RATE, STEPS, ROUNDS = 0.1, 10, 5


def _settings(**kwargs) -> PrivacySettings:
    base = dict(noise_multiplier=1.0, max_grad_norm=1.0, delta=DELTA, batch_size=8)
    return PrivacySettings(**{**base, **kwargs})


def _opacus_epsilon(releases: list[Release]) -> float:
    acc = RDPAccountant()
    for r in releases:
        for _ in range(r.steps):
            acc.step(noise_multiplier=r.noise, sample_rate=r.rate)
    return acc.get_epsilon(DELTA)


def _run(settings: PrivacySettings, site: str) -> tuple[PrivacyLedger, list[float], int]:
    """A site's rounds 1..ROUNDS under its policy: (ledger, noise per round, rounds trained)."""
    ledger, noises, trained = PrivacyLedger(), [], 0
    budget = settings.budget_for(site)
    for server_round in range(1, ROUNDS + 1):
        plan = plan_round(
            settings, server_round, sample_rate=RATE, steps=STEPS, prototypes=True, run="r"
        )
        noise = noise_for_round(
            settings.budget_policy,
            ledger,
            plan,
            default_noise=settings.noise_multiplier,
            server_round=server_round,
            total_rounds=ROUNDS,
            budget=budget,
            delta=DELTA,
            site=site,
        )
        plan = with_noise(plan, noise)
        try:
            ledger.check_budget(site, plan, budget, DELTA)
        except PrivacyBudgetExhaustedError:
            continue
        ledger.record(plan)
        noises.append(noise)
        trained += 1
    return ledger, noises, trained


def test_stop_policy_a_smaller_budget_trains_fewer_rounds() -> None:
    settings = _settings(epsilon_budget=8.0, site_budgets={"cam3": 4.5}, budget_policy="stop")
    tight, _, tight_rounds = _run(settings, "cam3")
    loose, _, loose_rounds = _run(settings, "cam1")
    assert 1 <= tight_rounds < loose_rounds
    assert tight.epsilon(DELTA) <= 4.5 < loose.epsilon(DELTA) <= 8.0
    # The ledger is exactly opacus's accountant on the same releases.
    assert tight.epsilon(DELTA) == pytest.approx(_opacus_epsilon(tight.releases), rel=1e-9)
    # The next round would pass the tight site's own budget: refused, naming it.
    plan = plan_round(settings, ROUNDS + 1, sample_rate=RATE, steps=STEPS, prototypes=True)
    with pytest.raises(PrivacyBudgetExhaustedError, match=r"site cam3.*budget 4\.5000"):
        tight.check_budget("cam3", plan, settings.budget_for("cam3"), DELTA)


def test_noise_policy_a_smaller_budget_trains_every_round_with_more_noise() -> None:
    settings = _settings(epsilon_budget=8.0, site_budgets={"cam3": 2.0}, budget_policy="noise")
    tight, tight_noise, tight_rounds = _run(settings, "cam3")
    loose, loose_noise, loose_rounds = _run(settings, "cam1")
    assert tight_rounds == loose_rounds == ROUNDS
    assert min(tight_noise) > max(loose_noise)
    for ledger, budget in ((tight, 2.0), (loose, 8.0)):
        eps = ledger.epsilon(DELTA)
        assert 0.98 * budget <= eps <= budget  # the whole budget, and not more
        assert eps == pytest.approx(_opacus_epsilon(ledger.releases), rel=1e-9)
    # Constant noise when the site takes part in every round (the plan does not change).
    assert max(tight_noise) == pytest.approx(min(tight_noise), rel=2e-3)


def test_calibration_accounts_for_what_was_already_spent() -> None:
    spent = PrivacyLedger([Release(SGD, 1, 1.5, RATE, STEPS), Release(SGD, 2, 1.5, RATE, STEPS)])
    plan = [
        Release(SGD, 3, 1.0, RATE, STEPS),
        Release(PROTOTYPES, 3, release_noise_multiplier(10.0), 1.0, 1),
    ]
    sigma = calibrate_noise(spent, plan, rounds_left=3, budget=6.0, delta=DELTA, site="cam2")
    future = [
        Release(r.kind, 3 + i, sigma if r.kind == SGD else r.noise, r.rate, r.steps)
        for i in range(3)
        for r in plan
    ]
    eps = _opacus_epsilon([*spent.releases, *future])
    assert 0.98 * 6.0 <= eps <= 6.0
    with pytest.raises(PrivacyConfigError, match=r"budget 0\.5 cannot cover 3 more round"):
        calibrate_noise(spent, plan, rounds_left=3, budget=0.5, delta=DELTA, site="cam2")
    with pytest.raises(PrivacyConfigError, match="finite budget for site cam2"):
        calibrate_noise(spent, plan, rounds_left=3, budget=float("inf"), delta=DELTA, site="cam2")
    with pytest.raises(PrivacyConfigError, match="budget_policy"):
        _settings(budget_policy="spend")


class _Nodes:
    """What ModalityAwareFedAvg.sample asks of Flower's Grid: the connected node ids."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    def get_node_ids(self) -> list[int]:
        return self.ids


def test_the_server_stops_sampling_a_site_out_of_its_own_budget() -> None:
    state = create_model(load_config(["model=tiny"]).model, 4).state_dict()
    strategy = ModalityAwareFedAvg(
        {k: state[k] for k in global_keys(state)}, 4, min_train_nodes=1, min_available_nodes=1
    )
    grid = _Nodes([11, 12, 13])
    assert strategy.sample(grid) == [11, 12, 13]
    meta = reply_metadata(12, MessageType.TRAIN)
    reason = "site cam3: DP budget exhausted, not training this round"
    strategy.aggregate_train(
        1, [Message(error=Error(code=BUDGET_EXHAUSTED_CODE, reason=reason), metadata=meta)]
    )
    assert strategy.sample(grid) == [11, 13]
    assert strategy.state_dict()["exhausted_nodes"] == [12]  # survives a checkpoint


@pytest.mark.slow
def test_sites_with_their_own_budgets_train_with_their_own_noise(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    """Real DP-SGD rounds of two sites under budget_policy=noise."""
    from client.site import SiteSpec, SiteTrainer
    from ppa.wire import pack

    torch.manual_seed(0)
    cfg = load_config(
        tiny_overrides(
            tiny_sysu_root,
            tmp_path,
            "privacy=dp",
            "privacy.batch_size=8",
            "privacy.secret_seed=3",
            "privacy.budget_policy=noise",
            "privacy.epsilon_budget=8.0",
            "+privacy.site_budgets.cam3=2.0",
            "federation.rounds=2",
        )
    )
    results = {}
    for pid in (2, 5):  # cam3 and cam6, both infrared
        trainer = SiteTrainer(cfg, SiteSpec(None, None, None, pid, 6))
        state = FlwrRecordDict()
        metrics = []
        for server_round in (1, 2):
            arrays = pack(trainer.model.state_dict(), global_keys(trainer.model.state_dict()))
            metrics.append(
                trainer.train_round(
                    arrays,
                    None,
                    server_round=server_round,
                    local_epochs=1,
                    half_precision=False,
                    state=state,
                    run_id="r",
                ).metrics
            )
        results[trainer.site.name] = metrics
    (t1, t2), (l1, l2) = results["cam3"], results["cam6"]
    assert t1["dp-noise-multiplier"] > l1["dp-noise-multiplier"]
    assert 0.98 * 2.0 <= t2["epsilon"] <= 2.0 and 0.98 * 8.0 <= l2["epsilon"] <= 8.0
    for (first, second), _ in ((results["cam3"], 2.0), (results["cam6"], 8.0)):
        history = [
            Release(SGD, r, m["dp-noise-multiplier"], m["dp-sample-rate"], int(m["dp-steps"]))
            for r, m in ((1, first), (2, second))
        ]
        proto = Release(PROTOTYPES, 1, release_noise_multiplier(10.0), 1.0, 1)
        expected = _opacus_epsilon([history[0], proto, history[1], proto])
        assert second["epsilon"] == pytest.approx(expected, rel=1e-9)
