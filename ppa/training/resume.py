"""Resuming centralised training from a checkpoint: every piece of state the loop carries.

A checkpoint written by centralised training holds the model, the optimiser, the epoch, the
loss history, the EMA identity prototypes (the targets of L_align) and, with a trained
anonymiser (``learned``, ``secure_reid``), its networks. Restoring only the model and optimiser
would restart L_align from empty prototypes and the anonymiser from a random initialisation.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ppa.checkpoint import CheckpointError, load_state_strict
from ppa.model import PPAEncoder
from ppa.prototypes import IdentityPrototypes


def restore_training_state(
    payload: dict[str, Any],
    source: str | os.PathLike,
    *,
    model: PPAEncoder,
    optimizer: torch.optim.Optimizer,
    prototypes: IdentityPrototypes,
    anonymizer: nn.Module | None = None,
) -> tuple[int, list[dict]]:
    """Load a checkpoint payload into the training objects (in place); returns
    ``(start_epoch, history)``."""
    load_state_strict(model, payload["state_dict"], source)
    if "optimizer" in payload:
        optimizer.load_state_dict(payload["optimizer"])
    saved = payload.get("prototypes")
    if saved is not None:
        means, valid = saved["means"], saved["valid"]
        if tuple(means.shape) != tuple(prototypes.means.shape):
            raise CheckpointError(
                f"checkpoint {source}: prototypes of shape {tuple(means.shape)}, the run "
                f"expects {tuple(prototypes.means.shape)}"
            )
        prototypes.means = means.to(prototypes.means.device, prototypes.means.dtype)
        prototypes.valid = valid.to(prototypes.valid.device, torch.bool)
    if "anonymizer" in payload:
        if anonymizer is None:
            raise CheckpointError(
                f"checkpoint {source} holds a trained anonymiser but the run has none "
                "(anonymizer=learned or secure_reid with an anonymised view)"
            )
        anonymizer.load_state_dict(payload["anonymizer"])
    return int(payload.get("epoch", 0)), list(payload.get("history", []))
