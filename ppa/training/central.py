"""Centralised (non-federated) PPA training: the reference federated runs are compared with.

Writes `<output_dir>/checkpoints/epoch_XXXX.pt` every `train.checkpoint_every` epochs and
`<output_dir>/checkpoints/last.pt` at the end, plus `train_history.json`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from ppa.checkpoint import load_checkpoint, save_checkpoint
from ppa.config import resolve_path
from ppa.data.noise_keys import CENTRAL
from ppa.data.protocols import load_train_set
from ppa.data.records import MODALITIES
from ppa.io import atomic_write_json
from ppa.prototypes import IdentityPrototypes
from ppa.public_start import check_public_start, training_provenance
from ppa.seeding import seed_everything
from ppa.training.loop import train_epoch
from ppa.training.optim import create_optimizer
from ppa.training.resume import restore_training_state
from ppa.training.setup import TrainingSetup

logger = logging.getLogger(__name__)


def loss_summary(metrics: dict[str, float]) -> str:
    """``id 1.234, triplet 0.567, ...`` of an epoch's mean loss terms."""
    return ", ".join(f"{k[5:]} {v:.3f}" for k, v in metrics.items() if k.startswith("loss_"))


def train_central(cfg: DictConfig) -> Path:
    """Train for `cfg.train.epochs` epochs; returns the final checkpoint path."""
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    out = resolve_path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    train_set = load_train_set(cfg.dataset)
    check_public_start(cfg)  # a pretrained start must not have seen these identities
    setup = TrainingSetup.create(
        cfg, root=train_set.root, num_classes=train_set.num_classes, owner=CENTRAL
    )
    model, anonymizer, device = setup.model, setup.anonymizer, setup.device
    loader = setup.train_loader(train_set.records, seed=int(cfg.seed))
    optimizer = create_optimizer(model, cfg.train.optimizer)
    anonymizer_optimizer = None
    if anonymizer is not None and anonymizer.anonymizer.trainable:
        anonymizer_optimizer = torch.optim.Adam(
            anonymizer.parameters(), lr=float(cfg.anonymizer.generator.lr)
        )
    prototypes = IdentityPrototypes.empty(
        len(MODALITIES), train_set.num_classes, model.num_features, device=device.device
    )
    start_epoch, history = 0, []
    if cfg.checkpoint:
        payload = load_checkpoint(resolve_path(cfg.checkpoint))
        start_epoch, history = restore_training_state(
            payload,
            cfg.checkpoint,
            model=model,
            optimizer=optimizer,
            prototypes=prototypes,
            anonymizer=anonymizer if anonymizer_optimizer is not None else None,
        )
        logger.info("resumed from %s at epoch %d", cfg.checkpoint, start_epoch)

    ctx = setup.step_context(
        prototypes=prototypes,
        prototype_momentum=float(cfg.train.prototype_momentum),
        anonymizer_optimizer=anonymizer_optimizer,
    )
    epochs = int(cfg.train.epochs)
    last = ckpt_dir / "last.pt"
    logger.info(
        "training %s on %s: %d images, %d identities, %d epochs, %d batches/epoch",
        cfg.ppa.name,
        cfg.dataset.name,
        len(train_set.records),
        train_set.num_classes,
        epochs,
        len(loader),
    )
    for epoch in range(start_epoch, epochs):
        factor, metrics = train_epoch(
            ctx,
            loader,
            optimizer,
            cfg.train,
            epoch,
            max_batches=cfg.train.max_batches_per_epoch,
            desc=f"epoch {epoch + 1}/{epochs}",
        )
        metrics.update(epoch=epoch + 1, lr_factor=factor)
        history.append(metrics)
        logger.info(
            "epoch %d/%d: loss %.4f (%s) %.1f img/s",
            epoch + 1,
            epochs,
            metrics["loss"],
            loss_summary(metrics),
            metrics["images_per_second"],
        )
        extra = {
            "epoch": epoch + 1,
            "optimizer": optimizer.state_dict(),
            "history": history,
            "prototypes": {"means": prototypes.means.cpu(), "valid": prototypes.valid.cpu()},
            # What a later run needs to check that this checkpoint is public for its data.
            "training_data": training_provenance(cfg.dataset, train_set),
        }
        if anonymizer_optimizer is not None:
            extra["anonymizer"] = anonymizer.state_dict()
        every = int(cfg.train.checkpoint_every or 0)
        if every and (epoch + 1) % every == 0:
            save_checkpoint(ckpt_dir / f"epoch_{epoch + 1:04d}.pt", model, cfg, **extra)
        if epoch + 1 == epochs:
            save_checkpoint(last, model, cfg, **extra)
    atomic_write_json(out / "train_history.json", history, indent=2)
    return last
