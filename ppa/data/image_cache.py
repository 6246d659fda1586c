"""Decoded training images kept in memory, so that an epoch after the first reads no file.

A federated site of the demo reads the same few hundred images every round, one epoch a
round; decoding them again is about 4 % of its round on the 2-core CPU machine (a tiny model
at 128 x 64; more for larger images and a cheaper model). A `DecodedImageCache`
lives as long as the training set-up that owns it (a federated site keeps its set-up across
rounds; a new loader per round reuses it) and holds what `read_image` returned, read-only,
up to a byte budget: once the budget is full further images are decoded on every read, as
without a cache. The arrays are the decoder's own, so training reads the same pixels either
way and a run's numbers do not change with the cache.

With DataLoader worker processes (``train.num_workers > 0``) each worker fills a copy of its
own: the budget holds per process.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ppa.data.images import read_image

_MIB = 1 << 20


class DecodedImageCache:
    """path -> decoded (H, W, 3) uint8 image, up to `max_bytes` of pixels."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"an image cache budget must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._images: dict[Path, np.ndarray] = {}

    @classmethod
    def from_config(cls, train_cfg) -> DecodedImageCache | None:
        """``train.image_cache_mb`` MiB (0 or absent: no cache, None)."""
        megabytes = float(train_cfg.get("image_cache_mb") or 0)
        if megabytes < 0:
            raise ValueError(f"train.image_cache_mb must be >= 0, got {megabytes}")
        return cls(int(megabytes * _MIB)) if megabytes else None

    def __len__(self) -> int:
        return len(self._images)

    def read(self, path: str | os.PathLike) -> np.ndarray:
        """`read_image(path)`, from memory when it was read before. The array is read-only:
        transforms build new arrays, and one that wrote into a cached image would fail here
        rather than corrupt every later epoch."""
        path = Path(path)
        image = self._images.get(path)
        if image is not None:
            return image
        image = read_image(path)
        if self.bytes + image.nbytes <= self.max_bytes:
            image.flags.writeable = False
            self._images[path] = image
            self.bytes += image.nbytes
        return image
