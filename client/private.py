"""A site's DP-SGD round: budget check, Poisson batches, private prototypes, the ledger.

The ledger (every Gaussian release of the site, ppa.dp.PrivacyLedger) is composed across
rounds. It lives in the ClientApp's ``context.state`` for the run and, with
``privacy.ledger_dir`` set, also in a file at the site, so a resumed or later run keeps
counting what earlier runs spent on the same data.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict

from ppa.config import resolve_path
from ppa.dp import (
    PerSampleGradients,
    PrivacyBudgetExhaustedError,
    PrivacyLedger,
    PrivacySettings,
    PrivateStep,
    create_poisson_loader,
    create_release_loader,
    freeze_other_modalities,
    plan_round,
    release_prototypes,
)
from ppa.dp.budgets import noise_for_round, with_noise
from ppa.dp.finetune import FinetuneSettings, ParameterAverage, prepare_finetune
from ppa.federation import BUDGET_EXHAUSTED_CODE
from ppa.public_start import check_public_start

if TYPE_CHECKING:
    from client.site import RoundResult, SiteTrainer

logger = logging.getLogger(__name__)

# context.state key of a site's privacy ledger (a ConfigRecord; see ppa.dp.PrivacyLedger).
DP_LEDGER = "dp-ledger"


__all__ = ["BUDGET_EXHAUSTED_CODE", "DP_LEDGER", "LedgerStore", "PrivateTraining"]


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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(fd, "w") as fh:
                json.dump(columns, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)


class PrivateTraining:
    """DP-SGD pieces that live as long as the site's trainer, and its private round."""

    def __init__(self, trainer: SiteTrainer):
        cfg, site = trainer.cfg, trainer.site
        self.trainer = trainer
        self.settings = PrivacySettings.from_config(cfg)
        frozen = freeze_other_modalities(trainer.model, site.modality)
        # The fine-tuning recipe (privacy.finetune): train the late part only, BatchNorm
        # frozen in eval mode; a public start must not hold any of this site's identities.
        self.finetune = FinetuneSettings.from_config(cfg)
        frozen += prepare_finetune(trainer.model, self.finetune)
        check_public_start(cfg, site=site.name, site_pids={r.pid for r in site.records})
        # Raises (naming model.norm) for a BatchNorm model; hooks stay on for the model's life.
        self.per_sample = PerSampleGradients(trainer.model)
        self.ledgers = LedgerStore(
            site.name, self.settings.accountant, cfg.privacy.get("ledger_dir")
        )
        if trainer.objective.uses("triplet"):
            logger.warning(
                "site %s: ppa.weights.triplet=%.2f ignored under DP (the triplet couples the "
                "records of a batch)",
                site.name,
                trainer.objective.weights["triplet"],
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
        global_arrays: Mapping[str, np.ndarray],
        prototypes: Mapping[str, np.ndarray] | None,
        *,
        server_round: int,
        local_epochs: int,
        half_precision: bool,
        state: RecordDict | None,
        run_id: str,
    ) -> RoundResult:
        """One round of DP-SGD; raises PrivacyBudgetExhaustedError before touching any data
        when the round would exceed the site's budget."""
        from client.site import RoundResult

        trainer, privacy = self.trainer, self.settings
        cfg, site = trainer.cfg, trainer.site
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
        optimizer = trainer.start_round(global_arrays, server_round)
        loader = create_poisson_loader(
            site.records,
            trainer.root,
            input_cfg=cfg.input,
            train_cfg=cfg.train,
            pose_cfg=cfg.pose,
            keypoints=trainer.keypoints,
            expected_batch_size=privacy.batch_size,
            seed=privacy.seed(server_round, site.name, "sampling"),
            on_bad_image=str(cfg.dataset.on_bad_image),
            multiplicity=self.finetune.augmentation_multiplicity,
        )
        sampler = loader.batch_sampler
        send_prototypes = bool(cfg.federation.get("prototypes", True))
        planned = plan_round(
            privacy,
            server_round,
            sample_rate=sampler.sample_rate,
            steps=local_epochs * sampler.steps,
            prototypes=send_prototypes,
            run=run_id,
        )
        budget = privacy.budget_for(site.name)
        # This site's own budget sets its noise (budget_policy=noise) or its last round (stop).
        noise = noise_for_round(
            privacy.budget_policy,
            ledger,
            planned,
            default_noise=privacy.noise_multiplier,
            server_round=server_round,
            total_rounds=int(cfg.federation.rounds),
            budget=budget,
            delta=privacy.delta,
            site=site.name,
        )
        planned = with_noise(planned, noise)
        try:
            projected = ledger.check_budget(site.name, planned, budget, privacy.delta)
        except PrivacyBudgetExhaustedError as err:
            logger.warning("%s", err)
            raise
        # Commit the spend before training: a crash mid-round must not under-count.
        ledger.record(planned)
        self.ledgers.save(state, ledger)

        average = (
            ParameterAverage(trainer.model, self.finetune.ema_decay)
            if self.finetune.ema_decay is not None
            else None
        )
        step = PrivateStep(
            self.per_sample,
            noise_multiplier=noise,
            max_grad_norm=privacy.max_grad_norm,
            expected_batch_size=sampler.sample_rate * sampler.num_records,
            seed=privacy.seed(server_round, site.name, "noise"),
            multiplicity=self.finetune.augmentation_multiplicity,
            physical_batch=self.finetune.physical_batch,
            after_step=None if average is None else average.update,
        )
        ctx = trainer.step_context(prototypes, private_step=step)
        start = time.perf_counter()
        epochs = trainer.run_epochs(
            ctx, loader, optimizer, sampler, server_round=server_round, local_epochs=local_epochs
        )
        if average is not None:
            average.apply()  # the averaged weights are what leaves the site
        if step.steps != planned[0].steps:
            raise RuntimeError(
                f"site {site.name}: took {step.steps} DP steps, accounted {planned[0].steps}"
            )
        m, dim = site.modality.index, trainer.model.num_features
        proto_sum = np.zeros((trainer.num_classes, dim), np.float32)
        proto_count = np.zeros((trainer.num_classes,), np.float32)
        if send_prototypes:
            generator = torch.Generator(device=trainer.device.device)
            generator.manual_seed(privacy.seed(server_round, site.name, "proto"))
            release = release_prototypes(
                trainer.model,
                create_release_loader(
                    site.records,
                    trainer.root,
                    input_cfg=cfg.input,
                    pose_cfg=cfg.pose,
                    keypoints=trainer.keypoints,
                    batch_size=max(privacy.batch_size, 1),
                    num_workers=int(cfg.train.num_workers),
                    on_bad_image=str(cfg.dataset.on_bad_image),
                ),
                num_modalities=2,
                num_classes=trainer.num_classes,
                clip=privacy.prototype_clip,
                noise=privacy.prototype_noise,
                device=trainer.device,
                mean=tuple(cfg.input.mean),
                std=tuple(cfg.input.std),
                anonymizer=trainer.anonymizer,
                correct_offsets=trainer.objective.offsets,
                generator=generator,
            )
            proto_sum = release.sums[m].cpu().numpy()
            proto_count = release.counts[m].cpu().numpy()
        seconds = time.perf_counter() - start
        epsilon = ledger.epsilon(privacy.delta)
        arrays = trainer.package(global_arrays, half_precision)
        # The realised Poisson batch sizes stay local (the analysis assumes they are not
        # released; the update is normalised by the expected size): report the expectation.
        seen = float(step.steps * sampler.sample_rate * sampler.num_records)
        losses = {k: float(v) for k, v in epochs[-1].items() if k.startswith("loss")}
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
                "num-examples": float(len(site.records)),
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
        return RoundResult(arrays, proto_sum, proto_count, metrics)
