"""Centralised DP-SGD training: the reference point for per-site DP in federated runs.

The whole training set is one "site" named ``central``: Poisson batches over every record,
per-record clipping and noise (`PrivateStep`), and L_align against identity prototypes that are
themselves a DP release (clipped + noised once per epoch, `release_prototypes`), never an EMA of
training batches. Every epoch is accounted in a `PrivacyLedger`; training stops before the
epoch that would take epsilon past ``privacy.epsilon_budget``. `scripts/train_central.py` calls
`train_central_private` when ``privacy.enabled``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from ppa.anonymize import KprAnonymizer
from ppa.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from ppa.config import resolve_path
from ppa.data.keypoints import load_dataset_keypoints
from ppa.data.protocols import load_train_set
from ppa.data.records import MODALITIES
from ppa.dp.accounting import (
    LedgerError,
    PrivacyBudgetExhaustedError,
    PrivacyLedger,
    plan_round,
)
from ppa.dp.finetune import FinetuneSettings, ParameterAverage, prepare_finetune
from ppa.dp.prototypes import release_prototypes
from ppa.dp.sampling import create_poisson_loader, create_release_loader
from ppa.dp.settings import PrivacyConfigError, PrivacySettings
from ppa.dp.sgd import PerSampleGradients, PrivateStep
from ppa.engine import (
    DeviceSettings,
    PPAObjective,
    StepContext,
    create_optimizer,
    set_epoch_lr,
    train_one_epoch,
)
from ppa.model import create_model
from ppa.prototypes import IdentityPrototypes
from ppa.public_start import check_public_start, training_provenance
from ppa.runtime import seed_everything

logger = logging.getLogger(__name__)

SITE = "central"


def train_central_private(cfg: DictConfig) -> Path:
    """DP-SGD for `cfg.train.epochs` epochs (or until the budget); returns `last.pt`.

    Checkpoints carry the ledger (``dp_ledger``) and ``epsilon``; ``cfg.checkpoint`` resumes
    with the ledger, so a resumed run keeps composing.
    """
    privacy = PrivacySettings.from_config(cfg)
    if cfg.anonymizer.name == "learned":
        raise PrivacyConfigError(
            "privacy=dp with anonymizer=learned: the generator would train on the private "
            "images outside the guarantee; use a fixed anonymiser (blur, mosaic, noise)"
        )
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    out = resolve_path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    device = DeviceSettings.from_config(cfg)
    objective = PPAObjective.from_config(cfg.ppa)
    train_set = load_train_set(cfg.dataset)
    check_public_start(cfg)  # a pretrained start must not have seen these identities
    keypoints = (
        load_dataset_keypoints(
            train_set.root, cfg.dataset.keypoints, required=cfg.pose.missing == "error"
        )
        if objective.anonymized_view
        else None
    )
    loader = create_poisson_loader(
        train_set.records,
        train_set.root,
        input_cfg=cfg.input,
        train_cfg=cfg.train,
        pose_cfg=cfg.pose,
        keypoints=keypoints,
        expected_batch_size=privacy.batch_size,
        seed=privacy.seed(int(cfg.seed), SITE, "sampling"),
        on_bad_image=str(cfg.dataset.on_bad_image),
        multiplicity=FinetuneSettings.from_config(cfg).augmentation_multiplicity,
    )
    sampler = loader.batch_sampler
    model = device.place(create_model(cfg.model, train_set.num_classes))
    finetune = FinetuneSettings.from_config(cfg)
    prepare_finetune(model, finetune)  # privacy.finetune: what DP-SGD trains, frozen BatchNorm
    grads = PerSampleGradients(model)
    optimizer = create_optimizer(model, cfg.train.optimizer)
    anonymizer = (
        KprAnonymizer.from_config(cfg).to(device.device) if objective.anonymized_view else None
    )
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
    release_loader = create_release_loader(
        train_set.records,
        train_set.root,
        input_cfg=cfg.input,
        pose_cfg=cfg.pose,
        keypoints=keypoints,
        batch_size=max(privacy.batch_size, 1),
        num_workers=int(cfg.train.num_workers),
        on_bad_image=str(cfg.dataset.on_bad_image),
    )
    uses_align = objective.uses("align")
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
        planned = plan_round(
            privacy,
            epoch + 1,
            sample_rate=sampler.sample_rate,
            steps=sampler.steps,
            prototypes=uses_align,
        )
        try:
            ledger.check_budget(SITE, planned, budget, privacy.delta)
        except PrivacyBudgetExhaustedError as err:
            if not last.exists():
                raise  # not even one epoch fits the budget: nothing to return
            logger.warning("stopping before epoch %d: %s", epoch + 1, err)
            break
        ledger.record(planned)
        average = (
            ParameterAverage(model, finetune.ema_decay) if finetune.ema_decay is not None else None
        )
        step = PrivateStep(
            grads,
            noise_multiplier=privacy.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            expected_batch_size=sampler.sample_rate * sampler.num_records,
            seed=privacy.seed(int(cfg.seed), SITE, epoch, "noise"),
            multiplicity=finetune.augmentation_multiplicity,
            physical_batch=finetune.physical_batch,
            after_step=None if average is None else average.update,
        )
        ctx = StepContext.from_config(
            cfg,
            model=model,
            objective=objective,
            anonymizer=anonymizer,
            device=device,
            prototypes=prototypes,
            private_step=step,
        )
        factor = set_epoch_lr(optimizer, epoch, cfg.train)
        sampler.set_epoch(epoch)
        metrics = train_one_epoch(ctx, loader, optimizer, desc=f"epoch {epoch + 1}/{epochs}")
        if average is not None:
            average.apply()
        if uses_align:
            # The prototypes the next epoch aligns to: a DP release (accounted above).
            generator = torch.Generator(device=device.device)
            generator.manual_seed(privacy.seed(int(cfg.seed), SITE, epoch, "proto"))
            release = release_prototypes(
                model,
                release_loader,
                num_modalities=len(MODALITIES),
                num_classes=train_set.num_classes,
                clip=privacy.prototype_clip,
                noise=privacy.prototype_noise,
                device=device,
                mean=tuple(cfg.input.mean),
                std=tuple(cfg.input.std),
                anonymizer=anonymizer,
                correct_offsets=objective.offsets,
                generator=generator,
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
            ", ".join(f"{k[5:]} {v:.3f}" for k, v in metrics.items() if k.startswith("loss_")),
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_history.json").write_text(json.dumps(history, indent=2))
    return last
