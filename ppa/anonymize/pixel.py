"""Fixed pixel-space anonymisers: none, mosaic, blur and additive Gaussian noise."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from ppa.anonymize.base import Anonymizer
from ppa.anonymize.prng import keyed_standard_normal
from ppa.pose.filters import gaussian_filter2d


def mosaic(images: Tensor, block: int) -> Tensor:
    """Pixelate (B, C, H, W) into ``block`` x ``block`` squares tiled from the top-left corner.

    Each square takes the mean of its pixels; squares cut by the right/bottom border average
    only the pixels they contain.
    """
    if block < 1:
        raise ValueError(f"mosaic block size must be >= 1, got {block}")
    if block == 1:
        return images
    h, w = images.shape[-2:]
    # ceil_mode with zero padding: a border window averages over its in-image pixels only.
    means = F.avg_pool2d(images, kernel_size=block, stride=block, ceil_mode=True)
    expanded = means.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    return expanded[..., :h, :w]


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


class IdentityAnonymizer(Anonymizer):
    """``none``: returns the images unchanged (the baseline without anonymisation)."""

    name = "none"

    def anonymize(self, images: Tensor, level: float, keys: Tensor | None) -> Tensor:
        return images


class MosaicAnonymizer(Anonymizer):
    """``mosaic``: block size ``strength x level x H / reference_height`` px, at least 1."""

    name = "mosaic"

    def block_size(self, level: float, height: int) -> int:
        return max(1, _round_half_up(self.pixels_at(level, height)))

    def anonymize(self, images: Tensor, level: float, keys: Tensor | None) -> Tensor:
        return mosaic(images, self.block_size(level, images.shape[-2]))


class BlurAnonymizer(Anonymizer):
    """``blur``: separable Gaussian, sigma ``strength x level x H / reference_height`` px.

    ``strength`` is the blur radius in the PIL sense (the Gaussian's standard deviation);
    borders are reflected.
    """

    name = "blur"

    def sigma(self, level: float, height: int) -> float:
        return self.pixels_at(level, height)

    def anonymize(self, images: Tensor, level: float, keys: Tensor | None) -> Tensor:
        return gaussian_filter2d(images, self.sigma(level, images.shape[-2]), padding="reflect")


class NoiseAnonymizer(Anonymizer):
    """``noise``: ``clip(x + N(0, (strength x level)^2), 0, 1)``, deterministic per image key.

    The noise of image ``i`` is a function of its secret key ``keys[i]`` and the image shape
    only (see `ppa.anonymize.prng`; the keys come from the owner's `NoiseKeys`), so it does not
    depend on the rest of the batch or on the device, and only the key holder can regenerate
    (and subtract) it; one image gets the same noise pattern at every level, scaled. Not scaled
    with image height: sigma is an intensity on [0, 1] images.
    """

    name = "noise"
    needs_keys = True

    def sigma(self, level: float) -> float:
        return self.strength * level

    def anonymize(self, images: Tensor, level: float, keys: Tensor | None) -> Tensor:
        return self.anonymize_levels(images, [level], keys)[0]

    def anonymize_levels(
        self, images: Tensor, levels: Sequence[float], keys: Tensor | None
    ) -> list[Tensor]:
        # One draw serves every level: only its scale differs.
        if images.shape[0] == 0 or all(self.sigma(level) == 0 for level in levels):
            return [images for _ in levels]
        if keys is None or keys.shape[-1] == 0:
            got = "None" if keys is None else f"shape {tuple(keys.shape)}"
            raise ValueError(
                f"the noise anonymizer needs per-image noise keys (B, 32) uint8, got {got}: "
                "load the images with their owner's NoiseKeys (ppa.data.noise_keys)"
            )
        noise = keyed_standard_normal(keys.to(images.device), images.shape[1:], dtype=images.dtype)
        return [(images + self.sigma(level) * noise).clamp(0.0, 1.0) for level in levels]
