"""Counter-based per-image random numbers, computed on the tensor's device.

Noise for image ``i`` is a pure function of ``(seeds[i], element index)``: 32-bit integer
hashes of the pair, turned into standard normals with Box-Muller. Compared with one seeded
``torch.Generator`` per image this needs no host copy of the seeds (no device sync), no loop over
the batch, and gives the same numbers on CPU and GPU (up to float rounding of log/cos), so a
gallery anonymised on one machine can be reproduced on another.

All integer arithmetic is done on int64 tensors holding unsigned 32-bit values, with products
kept below 2**63, so nothing relies on signed overflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_MASK16 = 0xFFFF
# Multipliers of the "lowbias32" integer hash (C. Wellons, hash-prospector), a well-mixed
# 32-bit finaliser.
_MUL1 = 0x7FEB352D
_MUL2 = 0x846CA68B
_UNIFORM_BITS = 24  # float32 represents every multiple of 2**-24 in [0, 1) exactly


def _mul32(x: Tensor, constant: int) -> Tensor:
    """(x * constant) mod 2**32 for int64 ``x`` in [0, 2**32), without int64 overflow."""
    low = x * (constant & _MASK16)
    high = ((x * (constant >> 16)) & _MASK16) << 16
    return (low + high) & _MASK32


def hash32(x: Tensor) -> Tensor:
    """Bijective 32-bit mixing of int64 values (taken mod 2**32)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, _MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, _MUL2)
    return x ^ (x >> 16)


def _seed_keys(seeds: Tensor) -> Tensor:
    """Fold 64-bit seeds (B,) into 32-bit stream keys (B,)."""
    seeds = seeds.to(torch.int64)
    low = seeds & _MASK32
    high = (seeds >> 32) & _MASK32  # arithmetic shift, then masked: negative seeds are fine
    return hash32(hash32(low) ^ high)


def _uniform_open(bits: Tensor, dtype: torch.dtype) -> Tensor:
    """Map 32-bit integers to uniforms in the open interval (0, 1)."""
    top = (bits >> (32 - _UNIFORM_BITS)).to(dtype)
    return (top + 0.5) / float(1 << _UNIFORM_BITS)


def seeded_standard_normal(
    seeds: Tensor, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal samples (B, *shape): row ``i`` depends only on ``seeds[i]`` and ``shape``.

    Lives on ``seeds.device``.
    """
    if seeds.ndim != 1:
        raise ValueError(f"seeds must have shape (B,), got {tuple(seeds.shape)}")
    numel = math.prod(shape)
    pairs = (numel + 1) // 2
    keys = _seed_keys(seeds).unsqueeze(1)  # (B, 1)
    counter = torch.arange(pairs, device=seeds.device, dtype=torch.int64).unsqueeze(0)
    # Box-Muller turns two independent uniforms (hashes of counters 2k and 2k+1 under the
    # image's key) into two independent normals: cos fills the first half, sin the second.
    u1 = _uniform_open(hash32(keys ^ hash32(2 * counter)), dtype)
    u2 = _uniform_open(hash32(keys ^ hash32(2 * counter + 1)), dtype)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    normal = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return normal[:, :numel].reshape(seeds.shape[0], *shape)
