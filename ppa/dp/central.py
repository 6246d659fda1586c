"""Centralised DP-SGD training: the reference point for per-site DP in federated runs.

The whole training set is one "site" named ``central``: Poisson batches over every record,
per-record clipping and noise (`PrivateStep`), and L_align against identity prototypes that are
themselves a DP release (clipped + noised once per epoch, `release_prototypes`), never an EMA of
training batches. Every epoch is accounted in a `PrivacyLedger`; training stops before the
epoch that would take epsilon past ``privacy.epsilon_budget``. The training command calls
`train_central_private` when ``privacy.enabled``; each epoch is one `ppa.dp.round`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from ppa.anonymize.factory import anonymizer_class
from ppa.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from ppa.config import resolve_path
from ppa.data.noise_keys import CENTRAL
from ppa.data.protocols import load_train_set
from ppa.dp.accounting import LedgerError, PrivacyBudgetExhaustedError, PrivacyLedger
from ppa.dp.round import (
    commit_releases,
    poisson_loader,
    private_epochs,
    release_private_prototypes,
)
from ppa.dp.settings import PrivacyConfigError, PrivacySettings
from ppa.dp.sgd import PerSampleGradients
from ppa.io import atomic_write_json
from ppa.model.finetune import FinetuneSettings
from ppa.prototypes import IdentityPrototypes
from ppa.public_start import check_public_start, training_provenance
from ppa.seeding import seed_everything
from ppa.training.central import loss_summary
from ppa.training.optim import create_optimizer
from ppa.training.setup import TrainingSetup

logger = logging.getLogger(__name__)

SITE = "central"


def train_central_private(cfg: DictConfig) -> Path:
    """DP-SGD for `cfg.train.epochs` epochs (or until the budget); returns `last.pt`.

    Checkpoints carry the ledger (``dp_ledger``) and ``epsilon``; ``cfg.checkpoint`` resumes
    with the ledger, so a resumed run keeps composing.
    """
    privacy = PrivacySettings.from_config(cfg)
    if anonymizer_class(cfg.anonymizer).trainable:
        raise PrivacyConfigError(
            f"privacy=dp with anonymizer={cfg.anonymizer.name}: its networks would train on "
            "the private images outside the guarantee; use a fixed anonymiser (blur, mosaic, noise)"
        )
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    out = resolve_path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    train_set = load_train_set(cfg.dataset)
    check_public_start(cfg)  # a pretrained start must not have seen these identities
    setup = TrainingSetup.create(
        cfg, root=train_set.root, num_classes=train_set.num_classes, owner=CENTRAL
    )
    model, device, objective = setup.model, setup.device, setup.objective
    finetune = FinetuneSettings.from_config(cfg)
    loader = poisson_loader(
        setup,
        train_set.records,
        expected_batch_size=privacy.batch_size,
        seed=privacy.seed(int(cfg.seed), SITE, "sampling"),
        multiplicity=finetune.augmentation_multiplicity,
    )
    sampler = loader.batch_sampler
    grads = PerSampleGradients(model)
    optimizer = create_optimizer(model, cfg.train.optimizer)
    ledger = PrivacyLedger(accountant=privacy.accountant)
    prototypes: IdentityPrototypes | None = None
    start_epoch, history = 0, []
    if cfg.checkpoint:
        payload = load_checkpoint(resolve_path(cfg.checkpoint))
        if "dp_ledger" not in payload:
            raise LedgerError(
                f"checkpoint {cfg.checkpoint} has no dp_ledger: it was not trained under DP and "
                "cannot be resumed with privacy=dp"
            )
        load_state_strict(model, payload["state_dict"], cfg.checkpoint)
        optimizer.load_state_dict(payload["optimizer"])
        ledger = PrivacyLedger.from_columns(
            payload["dp_ledger"], privacy.accountant, source=str(cfg.checkpoint)
        )
        if payload.get("prototypes") is not None:
            prototypes = IdentityPrototypes(
                payload["prototypes"]["means"], payload["prototypes"]["valid"]
            ).to(device.device)
        start_epoch = int(payload.get("epoch", 0))
        history = list(payload.get("history", []))
        logger.info("resumed from %s at epoch %d", cfg.checkpoint, start_epoch)
    uses_align = objective.uses_prototypes()
    budget = privacy.budget_for(SITE)
    epochs = int(cfg.train.epochs)
    last = ckpt_dir / "last.pt"
    logger.info(
        "DP training %s on %s: %d images, q=%.4f, %d steps/epoch, sigma=%.3f C=%.3f, budget %s",
        cfg.ppa.name,
        cfg.dataset.name,
        sampler.num_records,
        sampler.sample_rate,
        sampler.steps,
        privacy.noise_multiplier,
        privacy.max_grad_norm,
        budget,
    )
    for epoch in range(start_epoch, epochs):
        try:
            commit_releases(
                ledger, privacy, SITE, epoch + 1, sampler=sampler, epochs=1, prototypes=uses_align
            )
        except PrivacyBudgetExhaustedError as err:
            if not last.exists():
                raise  # not even one epoch fits the budget: nothing to return
            logger.warning("stopping before epoch %d: %s", epoch + 1, err)
            break
        step, ((factor, metrics),) = private_epochs(
            setup,
            loader,
            optimizer,
            grads,
            privacy,
            epochs=[epoch],
            noise_seed=privacy.seed(int(cfg.seed), SITE, epoch, "noise"),
            prototypes=prototypes,
            finetune=finetune,
            desc=f"epoch {epoch + 1}/{epochs}",
        )
        if uses_align:
            # The prototypes the next epoch aligns to: a DP release (accounted above).
            release = release_private_prototypes(
                setup,
                train_set.records,
                privacy,
                seed=privacy.seed(int(cfg.seed), SITE, epoch, "proto"),
            )
            prototypes = IdentityPrototypes.from_sums(release.sums, release.counts)
        epsilon = ledger.epsilon(privacy.delta)
        metrics.update(
            epoch=epoch + 1,
            lr_factor=factor,
            epsilon=epsilon,
            dp_steps=float(step.steps),
            dp_clipped=float(step.clipped),
        )
        history.append(metrics)
        logger.info(
            "epoch %d/%d: loss %.4f (%s), epsilon %.4f at delta=%g, %d/%d records clipped",
            epoch + 1,
            epochs,
            metrics["loss"],
            loss_summary(metrics),
            epsilon,
            privacy.delta,
            step.clipped,
            step.records,
        )
        extra = {
            "epoch": epoch + 1,
            "optimizer": optimizer.state_dict(),
            "history": history,
            "prototypes": None
            if prototypes is None
            else {"means": prototypes.means.cpu(), "valid": prototypes.valid.cpu()},
            "dp_ledger": ledger.to_columns(),
            "training_data": training_provenance(cfg.dataset, train_set),
            "epsilon": epsilon,
            "delta": privacy.delta,
        }
        every = int(cfg.train.checkpoint_every or 0)
        if every and (epoch + 1) % every == 0:
            save_checkpoint(ckpt_dir / f"epoch_{epoch + 1:04d}.pt", model, cfg, **extra)
        save_checkpoint(last, model, cfg, **extra)
    grads.close()
    atomic_write_json(out / "train_history.json", history, indent=2)
    return last
