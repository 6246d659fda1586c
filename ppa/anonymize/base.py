"""The anonymiser interface: images in [0, 1] -> anonymised images in [0, 1]."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ppa.anonymize.prng import KEY_BYTES


def check_images(images: Tensor) -> None:
    """Raise unless ``images`` is a floating (B, C, H, W) tensor."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point in [0, 1], got {images.dtype}")


def check_noise_keys(keys: Tensor, batch_size: int) -> None:
    """Raise unless ``keys`` is a uint8 tensor of shape (batch_size, 32) (one 256-bit key per
    image) or (batch_size, 0) (a batch loaded without keys)."""
    if not isinstance(keys, Tensor):
        raise TypeError(f"noise keys must be a torch.Tensor, got {type(keys).__name__}")
    if keys.ndim != 2 or keys.shape[0] != batch_size or keys.shape[1] not in (0, KEY_BYTES):
        raise ValueError(
            f"noise keys must have shape ({batch_size}, {KEY_BYTES}), got {tuple(keys.shape)}"
        )
    if keys.dtype != torch.uint8:
        raise TypeError(f"noise keys must be a uint8 tensor, got {keys.dtype}")


class Anonymizer(nn.Module, ABC):
    """Base of every anonymiser: ``forward(images, level, keys) -> images``.

    ``strength`` is the configured amount (block size / blur sigma in pixels at
    ``reference_height``, or noise sigma); ``level`` multiplies it per call (KPR's strong,
    medium and weak levels). ``keys`` (B, 32) uint8 are the images' secret noise keys
    (`ppa.data.noise_keys.NoiseKeys`): a stochastic anonymiser draws image ``i``'s randomness
    from ``keys[i]`` alone, so it is reproducible by, and only by, the key's holder;
    deterministic ones ignore them (and accept the (B, 0) of a batch loaded without keys).
    Images are not range-checked (that would synchronise with the device); inputs are expected
    in [0, 1] and outputs are clipped to it.
    """

    name: ClassVar[str]
    trainable: ClassVar[bool] = False  # has weights trained alongside the encoder
    needs_keys: ClassVar[bool] = False  # reads the images' secret noise keys
    trains_with_reid_loss: ClassVar[bool] = False  # the re-id loss reaches its weights too
    whole_image_only: ClassVar[bool] = False  # no pose-guided composition of levels
    reversible: ClassVar[bool] = False  # `recover` gives the raw image back with the key

    def __init__(self, strength: float, reference_height: int):
        super().__init__()
        if not math.isfinite(strength) or strength < 0:
            raise ValueError(f"anonymizer.strength must be a finite number >= 0, got {strength}")
        if int(reference_height) <= 0:
            raise ValueError(
                f"anonymizer.reference_height must be positive, got {reference_height}"
            )
        self.strength = float(strength)
        self.reference_height = int(reference_height)

    def pixels_at(self, level: float, height: int) -> float:
        """``strength x level`` in pixels of an image ``height`` pixels high."""
        return self.strength * level * height / self.reference_height

    def forward(self, images: Tensor, level: float = 1.0, keys: Tensor | None = None) -> Tensor:
        self._check_call(images, (level,), keys)
        return self.anonymize(images, float(level), keys)

    def forward_levels(
        self, images: Tensor, levels: Sequence[float], keys: Tensor | None = None
    ) -> list[Tensor]:
        """The images anonymised at each of ``levels``, sharing work between levels where the
        anonymiser can (one noise draw, one generator pass)."""
        self._check_call(images, levels, keys)
        return self.anonymize_levels(images, [float(level) for level in levels], keys)

    def _check_call(self, images: Tensor, levels: Sequence[float], keys: Tensor | None) -> None:
        check_images(images)
        for level in levels:
            if not math.isfinite(level) or level < 0:
                raise ValueError(f"anonymisation level must be a finite number >= 0, got {level}")
        if keys is not None:
            check_noise_keys(keys, images.shape[0])

    @abstractmethod
    def anonymize(self, images: Tensor, level: float, keys: Tensor | None) -> Tensor:
        """Anonymise validated images at ``level`` x the configured strength."""

    def anonymize_levels(
        self, images: Tensor, levels: Sequence[float], keys: Tensor | None
    ) -> list[Tensor]:
        """`anonymize` at several levels; override to share work between them."""
        return [self.anonymize(images, level, keys) for level in levels]

    def training_loss(
        self, raw: Tensor, anon: Tensor, masks: Any, keys: Tensor | None, level: float
    ) -> dict[str, Tensor]:
        """A trainable anonymiser's loss terms (their weighted sum under ``total``) for raw
        images and their anonymised view (`masks`: the KPR masks it was composed with, `level`:
        the whole-image level). Only for ``trainable`` anonymisers."""
        raise TypeError(f"anonymizer {self.name!r} has nothing to train")

    def recover(self, anon: Tensor, keys: Tensor | None) -> Tensor:
        """A reversible anonymiser's estimate of the raw images from anonymised ones and their
        keys. Only for ``reversible`` anonymisers."""
        raise TypeError(f"anonymizer {self.name!r} is not reversible")

    def extra_repr(self) -> str:
        return f"strength={self.strength}, reference_height={self.reference_height}"
