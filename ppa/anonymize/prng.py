"""Keyed counter-based random numbers, computed on the tensor's device: ChaCha20 (RFC 8439).

The noise of image ``i`` is a pure function of its 256-bit key ``keys[i]`` and the element
index: the ChaCha20 keystream of that key (nonce 0, block counter 0, 1, ...) read as 32-bit
words, turned into uniforms and then standard normals with Box-Muller. Without the key the
stream cannot be told from random nor regenerated, so the noise cannot be subtracted; with it,
the same numbers come back on any machine.

Computing the cipher with tensor ops instead of one seeded ``torch.Generator`` per image needs
no host copy of the keys (no device sync) and no loop over the batch, and gives the same words
on CPU and GPU (the normals agree up to float rounding of log/cos), so a gallery anonymised on
one machine can be reproduced on another by whoever holds the key.

All integer arithmetic is done on int64 tensors holding unsigned 32-bit words, masked after
every addition and shift, so nothing relies on signed overflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

KEY_BYTES = 32  # a ChaCha20 key: 256 bits
BLOCK_WORDS = 16
_MASK32 = 0xFFFFFFFF
_CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
_DOUBLE_ROUNDS = 10
# Rows of b, c and d in a diagonal round: (0, 5, 10, 15), (1, 6, 11, 12), ...
_DIAGONALS = ((5, 6, 7, 4), (10, 11, 8, 9), (15, 12, 13, 14))
_UNIFORM_BITS = 24  # float32 represents every multiple of 2**-24 in [0, 1) exactly


def key_words(keys: Tensor) -> Tensor:
    """(B, 32) uint8 keys -> (B, 8) int64 little-endian 32-bit words, as RFC 8439 reads them."""
    if keys.ndim != 2 or keys.shape[1] != KEY_BYTES or keys.dtype != torch.uint8:
        raise ValueError(
            f"noise keys must be a (B, {KEY_BYTES}) uint8 tensor, got {tuple(keys.shape)} "
            f"{keys.dtype}"
        )
    b = keys.to(torch.int64).view(keys.shape[0], KEY_BYTES // 4, 4)
    return b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)


def _rotl_(x: Tensor, n: int) -> None:
    """x <<<= n on 32-bit words, in place."""
    low = x >> (32 - n)
    x.bitwise_left_shift_(n).bitwise_or_(low).bitwise_and_(_MASK32)


def _quarter_rounds_(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> None:
    # Four quarter-rounds at once, in place (the state is large: no copies per step): row j of
    # a, b, c, d is the j-th (a, b, c, d) quadruple.
    a.add_(b).bitwise_and_(_MASK32)
    _rotl_(d.bitwise_xor_(a), 16)
    c.add_(d).bitwise_and_(_MASK32)
    _rotl_(b.bitwise_xor_(c), 12)
    a.add_(b).bitwise_and_(_MASK32)
    _rotl_(d.bitwise_xor_(a), 8)
    c.add_(d).bitwise_and_(_MASK32)
    _rotl_(b.bitwise_xor_(c), 7)


def chacha20_blocks(words: Tensor, counters: Tensor, nonce: Sequence[int] = (0, 0, 0)) -> Tensor:
    """ChaCha20 block function: (B, 8) key words x (N,) block counters -> (B, N, 16) words.

    Word ``[i, n, j]`` is the j-th little-endian output word of the block with counter
    ``counters[n]`` under key ``words[i]`` and the 96-bit ``nonce`` (three words).
    """
    batch, blocks = words.shape[0], counters.shape[0]
    const = torch.tensor(_CONSTANTS, dtype=torch.int64, device=words.device).view(4, 1, 1)
    tail = torch.tensor(nonce, dtype=torch.int64, device=words.device).view(3, 1, 1)
    start = torch.empty(16, batch, blocks, dtype=torch.int64, device=words.device)
    start[0:4] = const
    start[4:12] = words.T.unsqueeze(2)
    start[12] = counters.to(torch.int64).view(1, blocks)
    start[13:16] = tail
    state = start.clone()
    a, b, c, d = state[0:4], state[4:8], state[8:12], state[12:16]
    # Diagonal rounds work on the rows of b, c, d rotated by 1, 2, 3: the index lists below
    # line the diagonals up as columns, and copy the result back.
    diagonal = [torch.tensor(rows, device=words.device) for rows in _DIAGONALS]
    for _ in range(_DOUBLE_ROUNDS):
        _quarter_rounds_(a, b, c, d)
        rows = [state.index_select(0, index) for index in diagonal]
        _quarter_rounds_(a, *rows)
        for index, values in zip(diagonal, rows, strict=True):
            state.index_copy_(0, index, values)
    state.add_(start).bitwise_and_(_MASK32)
    return state.permute(1, 2, 0)  # (B, N, 16)


def _uniform_open(bits: Tensor, dtype: torch.dtype) -> Tensor:
    """Map 32-bit integers to uniforms in the open interval (0, 1)."""
    top = (bits >> (32 - _UNIFORM_BITS)).to(dtype)
    return (top + 0.5) / float(1 << _UNIFORM_BITS)


def keyed_standard_normal(
    keys: Tensor, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal samples (B, *shape): row ``i`` depends only on ``keys[i]`` (a 256-bit
    key, (B, 32) uint8) and ``shape``. Lives on ``keys.device``."""
    words = key_words(keys)
    numel = math.prod(shape)
    pairs = (numel + 1) // 2
    blocks = -(-2 * pairs // BLOCK_WORDS)
    counters = torch.arange(blocks, device=keys.device, dtype=torch.int64)
    stream = chacha20_blocks(words, counters).reshape(keys.shape[0], blocks * BLOCK_WORDS)
    # Box-Muller turns two independent uniforms (keystream words 2k and 2k+1) into two
    # independent normals: cos fills the first half, sin the second.
    u1 = _uniform_open(stream[:, 0 : 2 * pairs : 2], dtype)
    u2 = _uniform_open(stream[:, 1 : 2 * pairs : 2], dtype)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    normal = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return normal[:, :numel].reshape(keys.shape[0], *shape)
