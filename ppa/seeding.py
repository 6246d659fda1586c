"""Process-wide reproducibility: seeds and deterministic algorithms."""

from __future__ import annotations

import os
import random
import zlib

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with `deterministic`, ask torch for deterministic kernels.

    Determinism is what resume-equality needs (same round after a restart as without one);
    it costs speed on GPU, little on CPU.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from parts (e.g. run seed, round, site name), same in every process."""
    words = [p & 0xFFFFFFFF if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)
    return int(state[0]) & (2**63 - 1)
