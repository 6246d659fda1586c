"""Channel augmentation for visible-infrared re-identification, as in CAJ (Ye et al., 2021).

Two operations on a (H, W, 3) uint8 image, after the geometric transforms:

- random channel: with probability `random_channel`, one of the R, G, B channels chosen
  uniformly is copied to all three. A visible image then carries one band's intensities,
  like an infrared image; this is the "channel exchange" / "random channel to three
  channels" augmentation. (Luminance grayscale is ``train.augment.grayscale``.)
- random erasing: with probability `random_erasing`, a rectangle of 2-40 % of the image with
  aspect ratio in [0.3, 1/0.3] is filled with the per-channel `fill` colour (the dataset
  mean, so the erased area is featureless after normalisation). Applied to both modalities,
  as CAJ's channel random erasing and AGW's random erasing are.

Randomness comes only from the `rng` passed in, so a sample is reproducible from its
augmentation seed; nothing is drawn for an operation whose probability is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Attempts to place an erasing rectangle that fits before giving up (the reference code's 100).
_ERASE_ATTEMPTS = 100


@dataclass(frozen=True)
class ChannelAugment:
    """Random channel replication and random erasing (see the module docstring)."""

    random_channel: float = 0.0
    random_erasing: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_aspect: float = 0.3
    fill: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)

    def __post_init__(self) -> None:
        for name in ("random_channel", "random_erasing"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"train.augment.{name} must be in [0, 1], got {value}")
        low, high = self.erase_area
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"erase_area must satisfy 0 < low <= high <= 1, got {self.erase_area}")
        if not 0.0 < self.erase_aspect <= 1.0:
            raise ValueError(f"erase_aspect must be in (0, 1], got {self.erase_aspect}")
        if len(self.fill) != 3 or not all(0.0 <= f <= 1.0 for f in self.fill):
            raise ValueError(f"fill must be three values in [0, 1], got {self.fill}")

    @property
    def is_random(self) -> bool:
        return self.random_channel > 0.0 or self.random_erasing > 0.0

    @classmethod
    def from_config(cls, augment_cfg: Any) -> ChannelAugment:
        """From ``train.augment`` (absent keys: off)."""
        get = augment_cfg.get if hasattr(augment_cfg, "get") else lambda k, d: d
        return cls(
            random_channel=float(get("random_channel", 0.0)),
            random_erasing=float(get("random_erasing", 0.0)),
        )

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A new (H, W, 3) uint8 image (the input is not modified)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        out = image
        if self.random_channel > 0.0 and rng.random() < self.random_channel:
            channel = int(rng.integers(0, 3))
            out = np.repeat(out[:, :, channel : channel + 1], 3, axis=2)
        if self.random_erasing > 0.0 and rng.random() < self.random_erasing:
            out = self._erase(out, rng)
        return np.ascontiguousarray(out)

    def _erase(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        height, width = image.shape[:2]
        low, high = self.erase_area
        log_aspect = (math.log(self.erase_aspect), -math.log(self.erase_aspect))
        for _ in range(_ERASE_ATTEMPTS):
            area = rng.uniform(low, high) * height * width
            aspect = math.exp(rng.uniform(*log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if 0 < h < height and 0 < w < width:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                out = image.copy()
                out[top : top + h, left : left + w] = np.rint(np.asarray(self.fill) * 255.0).astype(
                    np.uint8
                )
                return out
        return image
