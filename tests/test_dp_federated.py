"""Per-site DP across federated rounds: the accountant composed in context.state, epsilon
against opacus's accountant, per-site budgets (a tight site stops and says so, the others go
on), private prototypes; and the real Flower app in simulation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import RecordDict
from omegaconf import DictConfig
from opacus.accountants import RDPAccountant

from client.private import DP_LEDGER
from client.site import SiteTrainer
from ppa.config import load_config
from ppa.data.partition import partition_sites
from ppa.data.protocols import load_train_set
from ppa.dp import PrivacyBudgetExhaustedError, release_noise_multiplier
from ppa.node_config import SiteSpec
from ppa.wire import global_keys, pack

from conftest import REPO, tiny_overrides

DELTA = 1e-5
BATCH = 8  # expected Poisson batch: 33-36 images per camera site of the tiny set


def dp_cfg(root: Path, tmp_path: Path, *extra: str) -> DictConfig:
    return load_config(
        tiny_overrides(
            root,
            tmp_path,
            "privacy=dp",
            f"privacy.batch_size={BATCH}",
            "privacy.secret_seed=3",
            *extra,
        )
    )


def site_sizes(cfg: DictConfig) -> dict[str, int]:
    sites = partition_sites(load_train_set(cfg.dataset), "by_camera", protocol="sysu")
    return {s.name: len(s.records) for s in sites}


def expected_epsilon(cfg: DictConfig, records: int, rounds: int, epochs: int = 1) -> float:
    """opacus's RDP accountant stepped by hand: per round, 1/q DP-SGD steps at rate q and one
    prototype release (rate 1, sigma_p / sqrt(2))."""
    acc = RDPAccountant()
    q = BATCH / records
    for _ in range(rounds):
        for _ in range(epochs * int(1 / q)):
            acc.step(noise_multiplier=float(cfg.privacy.noise_multiplier), sample_rate=q)
        acc.step(
            noise_multiplier=release_noise_multiplier(cfg.privacy.prototype_noise), sample_rate=1.0
        )
    return acc.get_epsilon(DELTA)


def global_arrays(trainer: SiteTrainer) -> dict[str, np.ndarray]:
    state = trainer.model.state_dict()
    return pack(state, global_keys(state))


def train(trainer: SiteTrainer, state: RecordDict, server_round: int, run_id: str = ""):
    return trainer.train_round(
        global_arrays(trainer),
        None,
        server_round=server_round,
        local_epochs=1,
        half_precision=False,
        state=state,
        run_id=run_id,
    )


def test_epsilon_composes_across_rounds_and_equals_opacus(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    cfg = dp_cfg(tiny_sysu_root, tmp_path, "privacy.epsilon_budget=null")  # unlimited
    trainer = SiteTrainer(cfg, SiteSpec(None, None, None, 2, 6))  # cam3, infrared
    assert trainer.site.name == "cam3"
    records = site_sizes(cfg)["cam3"]
    state = RecordDict()
    previous = 0.0
    for server_round in (1, 2, 3):
        result = train(trainer, state, server_round)
        eps = result.metrics["epsilon"]
        assert eps == pytest.approx(expected_epsilon(cfg, records, server_round), rel=1e-9)
        assert eps > previous
        previous = eps
        assert result.metrics["dp-steps"] == int(records / BATCH)
        assert result.metrics["dp-sample-rate"] == pytest.approx(BATCH / records)
        assert not any(k.startswith("loss") for k in result.metrics)  # share_losses=false
        assert "epsilon-budget" not in result.metrics
        # Realised Poisson batch sizes are not released: the expectation q * N * steps is.
        assert result.metrics["examples-seen"] == pytest.approx(BATCH * result.metrics["dp-steps"])
    ledger = state.config_records[DP_LEDGER]
    assert ledger["site"] == "cam3" and ledger["round"] == [1, 1, 2, 2, 3, 3]
    assert ledger["kind"] == ["sgd", "prototypes"] * 3
    # A repeated round would spend twice: refused.
    with pytest.raises(ValueError, match="round 3 of run '' was already accounted"):
        train(trainer, state, 3)
    # A fresh process (new trainer) with the same context.state carries the ledger on.
    again = SiteTrainer(cfg, SiteSpec(None, None, None, 2, 6))
    eps4 = train(again, state, 4).metrics["epsilon"]
    assert eps4 == pytest.approx(expected_epsilon(cfg, records, 4), rel=1e-9)
    # Prototypes: only the site's modality row travels, noised everywhere (also identities
    # the site does not hold) and clamped at 0.
    assert result.proto_sum.shape == (trainer.num_classes, trainer.model.num_features)
    assert (result.proto_count >= 0).all() and np.abs(result.proto_sum).min() > 0
    # Only the site's own stem/offset travel, and the other modality's never changed.
    assert not any(k.startswith(("stems.visible", "offsets.visible")) for k in result.arrays)
    with pytest.raises(ValueError, match=r"context\.state"):
        trainer.train_round(
            global_arrays(trainer),
            None,
            server_round=5,
            local_epochs=1,
            half_precision=False,
            state=None,
        )


def test_tight_budget_site_stops_and_says_so_loose_site_goes_on(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    probe = dp_cfg(tiny_sysu_root, tmp_path)
    records = site_sizes(probe)["cam3"]
    one, two = (expected_epsilon(probe, records, r) for r in (1, 2))
    budget = (one + two) / 2  # enough for round 1, not for round 2
    cfg = dp_cfg(tiny_sysu_root, tmp_path, f"+privacy.site_budgets.cam3={budget}")
    tight = SiteTrainer(cfg, SiteSpec(None, None, None, 2, 6))
    loose = SiteTrainer(cfg, SiteSpec(None, None, None, 0, 6))  # cam1, default budget 8
    tight_state, loose_state = RecordDict(), RecordDict()
    assert train(tight, tight_state, 1).metrics["epsilon-budget"] == pytest.approx(budget)
    train(loose, loose_state, 1)
    before = dict(tight_state.config_records[DP_LEDGER])
    for server_round in (2, 3):
        with pytest.raises(
            PrivacyBudgetExhaustedError, match=r"site cam3: DP budget exhausted, not training"
        ) as err:
            train(tight, tight_state, server_round)
        assert err.value.spent == pytest.approx(one) and err.value.projected > budget
        assert dict(tight_state.config_records[DP_LEDGER]) == before  # nothing spent
        result = train(loose, loose_state, server_round)
        assert result.metrics["epsilon"] <= 8.0
    assert loose_state.config_records[DP_LEDGER]["round"][-1] == 3


@pytest.mark.slow
def test_real_app_in_simulation_reports_epsilon_and_survives_an_exhausted_site(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    base = tiny_overrides(
        tiny_sysu_root,
        tmp_path,
        "privacy=dp",
        f"privacy.batch_size={BATCH}",
        "federation.rounds=3",
        "federation.eval_protocols=[raw-raw]",
    )
    # Budgets from the accountant itself: cam3 can afford round 1 only, every other site all
    # three rounds (whatever the tiny set's site sizes are).
    sizes = site_sizes(load_config(base))
    base_cfg = load_config(base)
    cam3_budget = 0.5 * (
        expected_epsilon(base_cfg, sizes["cam3"], 1) + expected_epsilon(base_cfg, sizes["cam3"], 2)
    )
    default_budget = 1.01 * max(expected_epsilon(base_cfg, n, 3) for n in sizes.values())
    overrides = [
        *base,
        f"privacy.epsilon_budget={default_budget:.6f}",
        f"+privacy.site_budgets.cam3={cam3_budget:.6f}",
    ]
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "run_simulation.py"),
            "--timeout",
            "900",
            "--workdir",
            str(tmp_path),
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rounds = json.loads((tmp_path / "out" / "history.json").read_text())["rounds"]
    cfg = load_config(overrides)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert sorted(rounds[1]["replied"]) == sorted(sizes)
    assert rounds[1]["failed"] == []
    assert len(rounds[2]["exhausted"]) == 1
    assert "site cam3: DP budget exhausted" in rounds[2]["exhausted"][0]
    # Out of budget, cam3 is no longer sampled: no failure, no new message to it.
    assert rounds[3]["excluded"] == 1 and rounds[3]["exhausted"] == []
    for r in rounds[2:]:
        assert "cam3" not in r["replied"] and len(r["replied"]) == 5
        assert r["failed"] == []
    for r in rounds[1:]:
        for site, metrics in r["sites"].items():
            expected = expected_epsilon(cfg, sizes[site], r["round"])
            assert metrics["epsilon"] == pytest.approx(expected, rel=1e-9), (site, r["round"])
            assert metrics["epsilon"] <= metrics["epsilon-budget"]
        assert 0.0 <= r["central"]["raw-raw"]["mAP"] <= 1.0


def test_a_ledger_file_keeps_counting_across_runs(tiny_sysu_root: Path, tmp_path: Path) -> None:
    ledger_dir = tmp_path / "site-state"
    cfg = dp_cfg(
        tiny_sysu_root, tmp_path, "privacy.epsilon_budget=null", f"privacy.ledger_dir={ledger_dir}"
    )
    records = site_sizes(cfg)["cam3"]
    first = SiteTrainer(cfg, SiteSpec(None, None, None, 2, 6))
    train(first, RecordDict(), 1, run_id="run-a")
    train(first, RecordDict(), 2, run_id="run-a")
    assert (ledger_dir / "cam3.dp-ledger.json").is_file()
    # A resumed run (new run id, empty context.state, new process) goes on from the file:
    # its round 3 is the site's third release, and it may reuse round numbers of run-a.
    resumed = SiteTrainer(cfg, SiteSpec(None, None, None, 2, 6))
    eps = train(resumed, RecordDict(), 3, run_id="run-b").metrics["epsilon"]
    assert eps == pytest.approx(expected_epsilon(cfg, records, 3), rel=1e-9)
    eps_again = train(resumed, RecordDict(), 1, run_id="run-c").metrics["epsilon"]
    assert eps_again == pytest.approx(expected_epsilon(cfg, records, 4), rel=1e-9)
    with pytest.raises(ValueError, match="round 2 of run 'run-a' was already accounted"):
        train(resumed, RecordDict(), 2, run_id="run-a")


def test_the_restricted_softmax_is_refused_under_dp(tiny_sysu_root: Path, tmp_path: Path) -> None:
    """The private round computes its own per-record losses; a restricted softmax that it
    would silently skip is refused when the site is built."""
    cfg = dp_cfg(tiny_sysu_root, tmp_path, "federation.absent_class_logit_scale=0.5")
    with pytest.raises(ValueError, match=r"site 'cam1': federation\.absent_class_logit_scale"):
        SiteTrainer(cfg, SiteSpec(None, None, None, partition_id=0, num_partitions=6))
