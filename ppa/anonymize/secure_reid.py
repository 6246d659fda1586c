"""``secure_reid``: SecureReID's keyed reversible anonymisation, adapted to this system.

SecureReID (Ye et al., TIFS 2024; its first version: Zhang et al., arXiv 2207.11677) learns an
anonymisation encoder supervised by a conventional desensitised image (here the mosaic at the
configured block size), a recovery decoder that gives the raw image back, and in its secure
form ties recovery to a secret key, so whoever holds the anonymiser but not the key recovers
nothing. The adaptation (what the PPA comparison calls the modified SecureReID):

- the key is each image's secret noise key (`ppa.data.noise_keys`: per site, per image, 256
  bits), read as a keyed standard-normal plane by the encoder and the decoder; SecureReID keys
  per identity, which test images of unknown people do not have;
- the encoder and decoder train jointly with the re-id model, as in SecureReID: one backward
  pass through the re-id loss (on the raw and anonymised views, ``ppa=anon_only``: whole
  image, no KPR, no DCMA) plus their own objective (`objective`), so the re-id loss reaches
  the encoder too and pulls it toward what keeps identity;
- one anonymisation level: the whole image at the level the composition asks for (KPR's
  pose-guided composition of three levels is PPA's, not SecureReID's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ppa.anonymize.base import Anonymizer
from ppa.anonymize.learned import (
    AnonymizationGenerator,
    TrainedSettings,
)
from ppa.anonymize.pixel import MosaicAnonymizer
from ppa.anonymize.prng import keyed_standard_normal

KEY_CHANNELS = 1  # the key's plane: one keyed standard normal per pixel


@dataclass(frozen=True)
class ReversibleSettings(TrainedSettings):
    """``anonymizer.generator`` of ``secure_reid``: the two networks, their LR, the weights."""

    width: int
    depth: int
    lr: float
    anonymization_weight: float
    recovery_weight: float
    wrong_key_weight: float


def wrong_keys(keys: Tensor) -> Tensor:
    """Keys that differ from ``keys`` in every bit: a stand-in for an attacker's guess."""
    return keys ^ 0xFF


class SecureReIDAnonymizer(Anonymizer):
    """``E(x, k) = clip(x + G_e(x, k), 0, 1)``, recovered by ``D(a, k) = clip(a + G_d(a, k))``.

    ``strength`` is the block size (pixels at ``reference_height``) of the mosaic that
    supervises the encoder; ``level`` scales it in training and is otherwise only checked for
    0 (the images unchanged). Deterministic given the weights and the keys.
    """

    name = "secure_reid"
    trainable = True
    needs_keys = True
    trains_with_reid_loss = True
    whole_image_only = True  # SecureReID anonymises the full body at one strength
    reversible = True

    def __init__(
        self, strength: float, reference_height: int, settings: ReversibleSettings, channels=3
    ):
        super().__init__(strength, reference_height)
        self.settings = settings
        width, depth = settings.width, settings.depth
        self.encoder = AnonymizationGenerator(width, depth, channels, KEY_CHANNELS)
        self.decoder = AnonymizationGenerator(width, depth, channels, KEY_CHANNELS)
        self.supervision = MosaicAnonymizer(strength, reference_height)

    @staticmethod
    def key_planes(keys: Tensor | None, images: Tensor) -> Tensor:
        """Each image's key as a (B, 1, H, W) keyed standard-normal plane."""
        if keys is None or keys.shape[-1] == 0:
            got = "None" if keys is None else f"shape {tuple(keys.shape)}"
            raise ValueError(
                f"the secure_reid anonymizer needs per-image noise keys (B, 32) uint8, got {got}:"
                " load the images with their owner's NoiseKeys (ppa.data.noise_keys)"
            )
        shape = (KEY_CHANNELS, *images.shape[-2:])
        return keyed_standard_normal(keys.to(images.device), shape, dtype=images.dtype)

    def anonymize(self, images: Tensor, level: float, keys: Tensor | None) -> Tensor:
        if level == 0 or self.strength == 0 or images.shape[0] == 0:
            return images
        return (images + self.encoder(images, self.key_planes(keys, images))).clamp(0.0, 1.0)

    def recover(self, anon: Tensor, keys: Tensor | None) -> Tensor:
        """The decoder's estimate of the raw images from anonymised ones and their keys."""
        return (anon + self.decoder(anon, self.key_planes(keys, anon))).clamp(0.0, 1.0)

    def training_loss(
        self, raw: Tensor, anon: Tensor, masks: Any, keys: Tensor | None, level: float
    ) -> dict[str, Tensor]:
        return self.objective(raw, anon, keys, level)

    def objective(
        self, raw: Tensor, anon: Tensor, keys: Tensor | None, level: float
    ) -> dict[str, Tensor]:
        """Loss terms of both networks and their weighted ``total`` (means of absolute errors).

        anonymization: ``|E(x, k) - mosaic(x, level)|``, the desensitised supervision.
        recovery: ``|D(E(x, k), k) - x|``: the right key gives the raw image back.
        wrong_key: ``|D(E(x, k), k') - E(x, k)|`` for keys ``k'`` that differ in every bit:
        without the key the decoder adds nothing to the anonymised image (its input and
        target are detached: this term trains the decoder only).
        """
        target = self.supervision(raw, level)
        anonymization = (anon - target).abs().mean()
        recovery = (self.recover(anon, keys) - raw).abs().mean()
        guessed = wrong_keys(keys) if keys is not None else None
        fixed = anon.detach()
        wrong_key = (self.recover(fixed, guessed) - fixed).abs().mean()
        s = self.settings
        total = (
            s.anonymization_weight * anonymization
            + s.recovery_weight * recovery
            + s.wrong_key_weight * wrong_key
        )
        return {
            "anonymization": anonymization,
            "recovery": recovery,
            "wrong_key": wrong_key,
            "total": total,
        }
