"""Per-round server checkpoints: everything `resume=true` needs, written atomically."""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppa.checkpoint import CheckpointError, atomic_torch_save
from ppa.io import atomic_write_text

logger = logging.getLogger(__name__)

SERVER_FORMAT = "ppa-server-checkpoint/1"
LATEST = "latest"


def capture_rng() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


@dataclass
class ServerCheckpoint:
    """The state after `server_round` rounds."""

    server_round: int
    arrays: dict[str, np.ndarray]
    strategy: dict[str, Any]
    history: list[dict]
    rng: dict[str, Any] = field(default_factory=capture_rng)
    config: dict[str, Any] = field(default_factory=dict)


class CheckpointStore:
    """`round_0003.pt` files plus a `latest` pointer, both replaced atomically.

    The pointer is written after the checkpoint it names, so a crash at any moment leaves
    `latest` naming a complete file.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        self.directory = Path(directory)
        self.keep = max(int(keep), 1)

    def path_for(self, server_round: int) -> Path:
        return self.directory / f"round_{server_round:04d}.pt"

    def save(self, ckpt: ServerCheckpoint) -> Path:
        path = atomic_torch_save(
            {"format": SERVER_FORMAT, **ckpt.__dict__}, self.path_for(ckpt.server_round)
        )
        atomic_write_text(self.directory / LATEST, path.name + "\n")
        self._prune()
        return path

    def _prune(self) -> None:
        rounds = sorted(self.directory.glob("round_*.pt"))
        for old in rounds[: -self.keep]:
            old.unlink(missing_ok=True)

    def latest_path(self) -> Path | None:
        pointer = self.directory / LATEST
        if not pointer.is_file():
            return None
        path = self.directory / pointer.read_text().strip()
        if not path.is_file():
            raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
        return path

    def load_latest(self) -> ServerCheckpoint | None:
        path = self.latest_path()
        if path is None:
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # corrupt or foreign file
            raise CheckpointError(f"unreadable server checkpoint {path}: {err}") from err
        if not isinstance(payload, dict) or payload.get("format") != SERVER_FORMAT:
            raise CheckpointError(f"{path} is not a PPA server checkpoint")
        payload.pop("format")
        logger.info("resuming from %s (round %d)", path, payload["server_round"])
        return ServerCheckpoint(**payload)
