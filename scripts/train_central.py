"""Centralised (non-federated) PPA training, the reference federated runs are compared with.

    python scripts/train_central.py experiment=demo ppa=full train.epochs=8

Writes `<output_dir>/checkpoints/epoch_XXXX.pt` every `train.checkpoint_every` epochs and
`<output_dir>/checkpoints/last.pt` at the end, plus `train_history.json`; the last line printed
is the path of `last.pt` (feed it to scripts/evaluate.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from ppa.anonymize import KprAnonymizer
from ppa.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from ppa.config import CONFIG_DIR, resolve_path
from ppa.data.keypoints import load_dataset_keypoints
from ppa.data.loader import create_train_loader
from ppa.data.protocols import load_train_set
from ppa.data.records import MODALITIES
from ppa.dp import train_central_private
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

logger = logging.getLogger("train_central")


def train(cfg: DictConfig) -> Path:
    """Train for `cfg.train.epochs` epochs; returns the final checkpoint path."""
    if cfg.privacy.get("enabled", False):
        # privacy=dp: per-record DP-SGD with Poisson batches and DP prototypes (ppa/dp).
        return train_central_private(cfg)
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    out = resolve_path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    device = DeviceSettings.from_config(cfg)
    objective = PPAObjective.from_config(cfg.ppa)

    train_set = load_train_set(cfg.dataset)
    check_public_start(cfg)
    needs_pose = objective.anonymized_view
    keypoints = (
        load_dataset_keypoints(
            train_set.root, cfg.dataset.keypoints, required=cfg.pose.missing == "error"
        )
        if needs_pose
        else None
    )
    loader = create_train_loader(
        train_set.records,
        train_set.root,
        input_cfg=cfg.input,
        train_cfg=cfg.train,
        pose_cfg=cfg.pose,
        keypoints=keypoints,
        seed=int(cfg.seed),
        on_bad_image=str(cfg.dataset.on_bad_image),
    )
    model = device.place(create_model(cfg.model, train_set.num_classes))
    optimizer = create_optimizer(model, cfg.train.optimizer)
    anonymizer = KprAnonymizer.from_config(cfg).to(device.device) if needs_pose else None
    anonymizer_optimizer = None
    if anonymizer is not None and cfg.anonymizer.name == "learned":
        anonymizer_optimizer = torch.optim.Adam(
            anonymizer.parameters(), lr=float(cfg.anonymizer.generator.lr)
        )
    prototypes = IdentityPrototypes.empty(
        len(MODALITIES), train_set.num_classes, model.num_features, device=device.device
    )
    start_epoch, history = 0, []
    if cfg.checkpoint:
        payload = load_checkpoint(resolve_path(cfg.checkpoint))
        load_state_strict(model, payload["state_dict"], cfg.checkpoint)
        if "optimizer" in payload:
            optimizer.load_state_dict(payload["optimizer"])
        start_epoch = int(payload.get("epoch", 0))
        history = list(payload.get("history", []))
        logger.info("resumed from %s at epoch %d", cfg.checkpoint, start_epoch)

    ctx = StepContext.from_config(
        cfg,
        model=model,
        objective=objective,
        anonymizer=anonymizer,
        device=device,
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
        factor = set_epoch_lr(optimizer, epoch, cfg.train)
        loader.batch_sampler.set_epoch(epoch)
        metrics = train_one_epoch(
            ctx,
            loader,
            optimizer,
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
            ", ".join(f"{k[5:]} {v:.3f}" for k, v in metrics.items() if k.startswith("loss_")),
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_history.json").write_text(json.dumps(history, indent=2))
    return last


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    path = train(cfg)
    print(path)


if __name__ == "__main__":
    main()
