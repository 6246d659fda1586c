"""A site's DP-SGD round: budget check, Poisson batches, private prototypes, the ledger.

The ledger (every Gaussian release of the site, ppa.dp.PrivacyLedger) is composed across
rounds. It lives in the ClientApp's ``context.state`` for the run and, with
``privacy.ledger_dir`` set, also in a file at the site, so a resumed or later run keeps
counting what earlier runs spent on the same data.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict

from ppa.config import resolve_path
from ppa.data.partition import Site
from ppa.dp import (
    PerSampleGradients,
    PrivacyBudgetExhaustedError,
    PrivacyLedger,
    PrivacySettings,
    freeze_other_modalities,
)
from ppa.dp.round import (
    commit_releases,
    poisson_loader,
    private_epochs,
    release_private_prototypes,
)
from ppa.io import atomic_write_json
from ppa.model.finetune import FinetuneSettings
from ppa.prototypes import IdentityPrototypes
from ppa.public_start import check_public_start
from ppa.training.loop import global_epoch
from ppa.training.setup import TrainingSetup
from ppa.wire import BUDGET_EXHAUSTED_CODE, NUM_EXAMPLES

logger = logging.getLogger(__name__)

# context.state key of a site's privacy ledger (a ConfigRecord; see ppa.dp.PrivacyLedger).
DP_LEDGER = "dp-ledger"


__all__ = ["BUDGET_EXHAUSTED_CODE", "DP_LEDGER", "LedgerStore", "PrivateRound", "PrivateTraining"]


@dataclass
class PrivateRound:
    """What a private round yields besides the model arrays: the site's DP prototype release
    (zeros when prototypes are not sent) and its metrics."""

    proto_sum: np.ndarray
    proto_count: np.ndarray
    metrics: dict[str, float]


class LedgerStore:
    """Where a site's ledger is kept: ``context.state`` and, optionally, a JSON file."""

    def __init__(self, site: str, accountant: str, directory: str | None):
        self.site = site
        self.accountant = accountant
        self.path = (resolve_path(directory) / f"{site}.dp-ledger.json") if directory else None

    def load(self, state: RecordDict) -> PrivacyLedger:
        if self.path is not None and self.path.is_file():
            try:
                payload = json.loads(self.path.read_text())
            except (OSError, ValueError) as err:
                raise ValueError(f"unreadable DP ledger {self.path}: {err}") from err
            return self._from(payload, str(self.path))
        if DP_LEDGER in state.config_records:
            return self._from(dict(state.config_records[DP_LEDGER]), f"context.state {DP_LEDGER}")
        return PrivacyLedger(accountant=self.accountant)

    def _from(self, payload: Mapping, source: str) -> PrivacyLedger:
        owner = str(payload.get("site", self.site))
        if owner != self.site:
            raise ValueError(f"{source} belongs to site {owner!r}, this node trains {self.site!r}")
        columns = {k: list(v) for k, v in payload.items() if k != "site"}
        return PrivacyLedger.from_columns(columns, self.accountant, source=source)

    def save(self, state: RecordDict, ledger: PrivacyLedger) -> None:
        columns = {"site": self.site, **ledger.to_columns()}
        state[DP_LEDGER] = ConfigRecord(columns)
        if self.path is not None:
            atomic_write_json(self.path, columns)


class PrivateTraining:
    """DP-SGD pieces that live as long as the site's model, and its private round."""

    def __init__(self, setup: TrainingSetup, site: Site):
        cfg = setup.cfg
        self.setup = setup
        self.site = site
        self.settings = PrivacySettings.from_config(cfg)
        frozen = freeze_other_modalities(setup.model, site.modality)
        # The fine-tuning recipe's step-shaping keys (privacy.finetune; the set-up already froze
        # what it does not train); a public start must not hold any of this site's identities.
        self.finetune = FinetuneSettings.from_config(cfg)
        check_public_start(cfg, site=site.name, site_pids={r.pid for r in site.records})
        # Raises (naming model.norm) for a BatchNorm model; hooks stay on for the model's life.
        self.per_sample = PerSampleGradients(setup.model)
        self.ledgers = LedgerStore(
            site.name, self.settings.accountant, cfg.privacy.get("ledger_dir")
        )
        if setup.objective.uses("triplet"):
            logger.warning(
                "site %s: ppa.weights.triplet=%.2f ignored under DP (the triplet couples the "
                "records of a batch)",
                site.name,
                setup.objective.weights["triplet"],
            )
        s = self.settings
        logger.info(
            "site %s: DP-SGD sigma=%.3f C=%.3f delta=%g budget=%s (%s accountant, ledger %s); "
            "%d frozen parameters of the other modality",
            site.name,
            s.noise_multiplier,
            s.max_grad_norm,
            s.delta,
            s.budget_for(site.name),
            s.accountant,
            self.ledgers.path or "context.state",
            len(frozen),
        )

    def train_round(
        self,
        start_round: Callable[[], torch.optim.Optimizer],
        prototypes: IdentityPrototypes | None,
        *,
        server_round: int,
        local_epochs: int,
        state: RecordDict | None,
        run_id: str,
    ) -> PrivateRound:
        """One round of DP-SGD; raises PrivacyBudgetExhaustedError before touching any data
        when the round would exceed the site's budget. `start_round` seeds the round, loads
        the global model and returns a fresh optimiser."""
        setup, site, privacy = self.setup, self.site, self.settings
        cfg = setup.cfg
        if state is None:
            raise ValueError(
                f"site {site.name}: privacy.enabled needs the ClientApp's context.state to "
                "compose the accountant across rounds (train_round(..., state=context.state))"
            )
        ledger = self.ledgers.load(state)
        if server_round in ledger.rounds(run_id):
            raise ValueError(
                f"site {site.name}: round {server_round} of run {run_id!r} was already "
                "accounted; a repeated round would spend twice"
            )
        optimizer = start_round()
        loader = poisson_loader(
            setup,
            site.records,
            expected_batch_size=privacy.batch_size,
            seed=privacy.seed(server_round, site.name, "sampling"),
            multiplicity=self.finetune.augmentation_multiplicity,
        )
        sampler = loader.batch_sampler
        send_prototypes = bool(cfg.federation.get("prototypes", True))
        budget = privacy.budget_for(site.name)
        try:
            # Commit the spend before training: a crash mid-round must not under-count. This
            # site's own budget sets its noise (budget_policy=noise) or its last round (stop).
            planned, projected = commit_releases(
                ledger,
                privacy,
                site.name,
                server_round,
                sampler=sampler,
                epochs=local_epochs,
                prototypes=send_prototypes,
                run=run_id,
                total_rounds=int(cfg.federation.rounds),
            )
        except PrivacyBudgetExhaustedError as err:
            logger.warning("%s", err)
            raise
        self.ledgers.save(state, ledger)
        noise = planned[0].noise

        start = time.perf_counter()
        step, epochs = private_epochs(
            setup,
            loader,
            optimizer,
            self.per_sample,
            privacy,
            epochs=[global_epoch(server_round, local_epochs, e) for e in range(local_epochs)],
            noise_seed=privacy.seed(server_round, site.name, "noise"),
            prototypes=prototypes,
            noise_multiplier=noise,
            finetune=self.finetune,
            progress=False,
            desc=f"{site.name} r{server_round}",
        )
        if step.steps != planned[0].steps:
            raise RuntimeError(
                f"site {site.name}: took {step.steps} DP steps, accounted {planned[0].steps}"
            )
        m, dim = site.modality.index, setup.model.num_features
        proto_sum = np.zeros((setup.num_classes, dim), np.float32)
        proto_count = np.zeros((setup.num_classes,), np.float32)
        if send_prototypes:
            release = release_private_prototypes(
                setup, site.records, privacy, seed=privacy.seed(server_round, site.name, "proto")
            )
            proto_sum = release.sums[m].cpu().numpy()
            proto_count = release.counts[m].cpu().numpy()
        seconds = time.perf_counter() - start
        epsilon = ledger.epsilon(privacy.delta)
        # The realised Poisson batch sizes stay local (the analysis assumes they are not
        # released; the update is normalised by the expected size): report the expectation.
        seen = float(step.steps * sampler.sample_rate * sampler.num_records)
        losses = {k: float(v) for k, v in epochs[-1][1].items() if k.startswith("loss")}
        logger.info(
            "site %s round %d: DP-SGD %d steps at q=%.4f, %d records clipped of %d; loss %s; "
            "epsilon %.4f (projected %.4f) of budget %s",
            site.name,
            server_round,
            step.steps,
            sampler.sample_rate,
            step.clipped,
            step.records,
            ", ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in losses.items()),
            epsilon,
            projected,
            budget,
        )
        metrics = dict(losses) if privacy.share_losses else {}
        metrics.update(
            {
                NUM_EXAMPLES: float(len(site.records)),
                "examples-seen": seen,
                "train-seconds": seconds,
                "images-per-second": seen / seconds if seconds > 0 else 0.0,
                "epsilon": float(epsilon),
                "dp-delta": privacy.delta,
                "dp-noise-multiplier": float(noise),
                "dp-sample-rate": float(sampler.sample_rate),
                "dp-steps": float(step.steps),
            }
        )
        if np.isfinite(budget):
            metrics["epsilon-budget"] = float(budget)
        return PrivateRound(proto_sum, proto_count, metrics)
