"""Central resume restores the prototypes and the learned anonymiser, not only the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ppa.anonymize import KprAnonymizer
from ppa.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ppa.config import load_config
from ppa.model import create_model
from ppa.prototypes import IdentityPrototypes
from ppa.training.optim import create_optimizer
from ppa.training.resume import restore_training_state

NUM_CLASSES = 5


def _objects(cfg, seed: int):
    torch.manual_seed(seed)
    model = create_model(cfg.model, NUM_CLASSES)
    optimizer = create_optimizer(model, cfg.train.optimizer)
    prototypes = IdentityPrototypes.empty(2, NUM_CLASSES, model.num_features)
    anonymizer = KprAnonymizer.from_config(cfg)
    return model, optimizer, prototypes, anonymizer


def test_resume_restores_prototypes_and_the_learned_anonymiser(tmp_path: Path) -> None:
    cfg = load_config(["model=tiny", "anonymizer=learned"])
    model, optimizer, prototypes, anonymizer = _objects(cfg, seed=0)
    prototypes.means = torch.randn_like(prototypes.means)
    prototypes.valid[0, 1] = prototypes.valid[1, 3] = True
    with torch.no_grad():
        for param in anonymizer.parameters():
            param.add_(1.0)
    path = save_checkpoint(
        tmp_path / "epoch.pt",
        model,
        cfg,
        epoch=3,
        optimizer=optimizer.state_dict(),
        history=[{"loss": 1.0}] * 3,
        prototypes={"means": prototypes.means, "valid": prototypes.valid},
        anonymizer=anonymizer.state_dict(),
    )
    fresh_model, fresh_opt, fresh_protos, fresh_anon = _objects(cfg, seed=1)
    assert not fresh_protos.valid.any()
    start, history = restore_training_state(
        load_checkpoint(path),
        path,
        model=fresh_model,
        optimizer=fresh_opt,
        prototypes=fresh_protos,
        anonymizer=fresh_anon,
    )
    assert start == 3 and len(history) == 3
    assert torch.equal(fresh_protos.means, prototypes.means)
    assert torch.equal(fresh_protos.valid, prototypes.valid)
    for (name, restored), saved in zip(
        fresh_anon.state_dict().items(), anonymizer.state_dict().values(), strict=True
    ):
        assert torch.equal(restored, saved), name
    for restored, saved in zip(fresh_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(restored, saved)


def test_resume_refuses_mismatched_state(tmp_path: Path) -> None:
    cfg = load_config(["model=tiny", "anonymizer=learned"])
    model, optimizer, prototypes, anonymizer = _objects(cfg, seed=0)
    path = save_checkpoint(
        tmp_path / "a.pt",
        model,
        cfg,
        prototypes={"means": torch.zeros(2, 7, model.num_features), "valid": torch.zeros(2, 7)},
        anonymizer=anonymizer.state_dict(),
    )
    payload = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="prototypes of shape"):
        restore_training_state(
            payload, path, model=model, optimizer=optimizer, prototypes=prototypes
        )
    payload.pop("prototypes")
    with pytest.raises(CheckpointError, match="trained anonymiser"):
        restore_training_state(
            payload, path, model=model, optimizer=optimizer, prototypes=prototypes
        )
