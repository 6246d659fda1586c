"""A public start checkpoint's encoder weights copied into a freshly built model.

`ppa.public_start` decides whether a checkpoint may start a run (its identities are public);
this module fits its weights to the model: everything but the identity-bound classifier,
with shared trunk statistics seeding each modality of a per-modality trunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ppa.model.modality_norm import seed_modality_statistics
from ppa.public_start import PublicStartError, is_identity_bound


def load_start_weights(model: torch.nn.Module, payload: Mapping[str, Any], source: str) -> None:
    """Copy a start checkpoint's encoder weights into `model` (all but the classifier).

    Every other weight must exist with the same shape: a start of another architecture or
    normalisation (BatchNorm vs GroupNorm) is an error naming the first mismatches. A start
    with shared trunk statistics seeds every modality's statistics of a per-modality trunk.
    """
    own = {k: v for k, v in model.state_dict().items() if not is_identity_bound(k)}
    state = {k: v for k, v in payload["state_dict"].items() if not is_identity_bound(k)}
    state = seed_modality_statistics(state, own)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise PublicStartError(
            f"model.pretrained_path={source} does not fit this model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, shape mismatches {shapes[:3]} (a BatchNorm start "
            "needs model.norm=batch: privacy=dp_finetune keeps it, frozen)"
        )
    model.load_state_dict(state, strict=False)
