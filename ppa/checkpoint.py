"""Model checkpoints: atomic writes, validated reads, clear errors for the wrong file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ppa.io import atomic_write
from ppa.model import PPAEncoder, create_model

CHECKPOINT_FORMAT = "ppa-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (missing, corrupt, another model)."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the target folder, fsync, then rename over `path`.

    A crash mid-write leaves the previous file intact, never a half-written one.
    """
    with atomic_write(path) as fh:
        torch.save(obj, fh)
    return Path(path)


def save_checkpoint(
    path: str | os.PathLike, model: PPAEncoder, config: DictConfig, **extra: Any
) -> Path:
    """Write model weights + the model config (to rebuild it) + the full run config."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": OmegaConf.to_container(config.model, resolve=True),
        "num_classes": model.num_classes,
        "state_dict": model.state_dict(),
        "config": OmegaConf.to_container(config, resolve=True),
        **extra,
    }
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint written by `save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt/foreign file
        raise CheckpointError(f"unreadable checkpoint {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a PPA model checkpoint (expected format {CHECKPOINT_FORMAT!r})"
        )
    return payload


def load_state_strict(
    model: PPAEncoder, state_dict: dict[str, torch.Tensor], source: str | os.PathLike
) -> None:
    """Load weights, naming the file and the first mismatches if they belong to another model."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {source} does not fit this model: missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{'...' if len(unexpected) > 3 else ''}, shape mismatches {shapes[:3]}"
        )
    model.load_state_dict(state_dict)


def model_from_checkpoint(
    path: str | os.PathLike, expected_model: DictConfig | None = None
) -> tuple[PPAEncoder, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained with and load its weights.

    With `expected_model`, a checkpoint of a different architecture is refused up front.
    """
    payload = load_checkpoint(path)
    model_cfg = OmegaConf.create(payload["model_config"])
    if expected_model is not None:
        for key in ("arch", "arch_kwargs"):
            want = OmegaConf.to_container(expected_model, resolve=True).get(key)
            have = OmegaConf.to_container(model_cfg, resolve=True).get(key)
            if want != have:
                raise CheckpointError(
                    f"checkpoint {path} holds model.{key}={have!r}, the config asks for "
                    f"{want!r}; pick the matching model= option"
                )
    # The weights come from the checkpoint: never download pretrained ones to rebuild.
    model_cfg.pretrained = False
    model_cfg.pretrained_path = None
    if "neck_stats" not in model_cfg and "neck.running_mean" in payload["state_dict"]:
        # Written before the BNNeck kept per-modality statistics: one shared set.
        model_cfg.neck_stats = "shared"
    model = create_model(model_cfg, int(payload["num_classes"]))
    load_state_strict(model, payload["state_dict"], path)
    return model, payload
