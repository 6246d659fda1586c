"""``learned``: a small convolutional generator trained for privacy vs structure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppa.anonymize.base import Anonymizer, check_images
from ppa.anonymize.measures import SSIM_RADIUS, ssim_map
from ppa.pose.filters import gaussian_filter2d
from ppa.pose.heatmaps import KprMasks

# Low-pass scale of the structure term as a fraction of the image height (8 px at 288): about a
# limb's half-width, so where body parts are is kept and the texture inside them is free.
LAYOUT_SIGMA = 1.0 / 36.0


class TrainedSettings:
    """Base of a trained anonymiser's settings dataclass (``width``, ``depth``, ``lr`` and
    ``*_weight`` fields, read from ``anonymizer.generator``)."""

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 0:
            raise ValueError(
                f"anonymizer.generator needs width >= 1 and depth >= 0, got "
                f"width={self.width}, depth={self.depth}"
            )
        weights = {f.name: getattr(self, f.name) for f in fields(self) if "weight" in f.name}
        if self.lr <= 0 or min(weights.values()) < 0:
            got = ", ".join(f"{k}={v}" for k, v in weights.items())
            raise ValueError(
                f"anonymizer.generator needs lr > 0 and weights >= 0, got lr={self.lr}, {got}"
            )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Self:
        """The settings from ``anonymizer.generator`` (every field present; ints and floats)."""
        missing = [f.name for f in fields(cls) if f.name not in cfg]
        if missing:
            raise KeyError(f"missing config key(s) anonymizer.generator.{', '.join(missing)}")
        cast = {"int": int, "float": float}
        return cls(**{f.name: cast[str(f.type)](cfg[f.name]) for f in fields(cls)})


@dataclass(frozen=True)
class GeneratorSettings(TrainedSettings):
    """``anonymizer.generator``: architecture, optimiser LR and objective weights."""

    width: int
    depth: int
    lr: float
    privacy_weight: float
    structure_weight: float


class AnonymizationGenerator(nn.Module):
    """A small U-Net: ``depth`` stride-2 stages down and back up, ``width`` channels throughout.

    Returns a displacement in [-1, 1] per pixel and channel. No batch normalisation: the output
    for one image must not depend on the rest of the batch. ``condition_channels`` extra input
    planes (e.g. a key pattern) are read alongside the image; the output has ``channels``.
    """

    def __init__(self, width: int, depth: int, channels: int = 3, condition_channels: int = 0):
        super().__init__()
        inputs = channels + condition_channels
        self.stem = nn.Sequential(nn.Conv2d(inputs, width, 3, padding=1), nn.ReLU())
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())
            for _ in range(depth)
        )
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU())
            for _ in range(depth)
        )
        self.head = nn.Conv2d(width, channels, 1)

    def forward(self, images: Tensor, condition: Tensor | None = None) -> Tensor:
        x = 2.0 * images - 1.0  # centre [0, 1] inputs
        if condition is not None:
            x = torch.cat([x, condition], dim=1)
        x = self.stem(x)
        skips = []
        for stage in self.down:
            skips.append(x)
            x = stage(x)
        for stage in self.up:
            skip = skips.pop()
            # Resize to the skip's exact size: odd sizes do not halve evenly.
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        return torch.tanh(self.head(x))


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` weighted by ``mask`` (broadcast over channels); 0 for an empty mask."""
    weight = mask.expand_as(values)
    return (values * weight).sum() / weight.sum().clamp(min=torch.finfo(values.dtype).eps)


class LearnedAnonymizer(Anonymizer):
    """``learned``: ``clip(x + strength x level x G(x), 0, 1)`` with G in [-1, 1].

    ``level`` bounds how far a pixel may move from the input. Deterministic given the weights
    (noise ``keys`` are ignored). Train G with `objective` (its own optimiser, ``settings.lr``).
    """

    name = "learned"
    trainable = True

    def __init__(
        self,
        strength: float,
        reference_height: int,
        settings: GeneratorSettings,
        channels: int = 3,
        layout_sigma: float = LAYOUT_SIGMA,
    ):
        super().__init__(strength, reference_height)
        if layout_sigma <= 0:
            raise ValueError(f"layout_sigma must be positive, got {layout_sigma}")
        self.settings = settings
        self.layout_sigma = layout_sigma
        self.generator = AnonymizationGenerator(settings.width, settings.depth, channels)

    def anonymize(self, images: Tensor, level: float, keys: Tensor | None) -> Tensor:
        return self.anonymize_levels(images, [level], keys)[0]

    def anonymize_levels(
        self, images: Tensor, levels: Sequence[float], keys: Tensor | None
    ) -> list[Tensor]:
        steps = [self.strength * level for level in levels]
        if all(step == 0 for step in steps):
            return [images for _ in levels]
        # One generator pass serves every level: the level only scales the displacement.
        displacement = self.generator(images)
        return [(images + step * displacement).clamp(0.0, 1.0) for step in steps]

    def training_loss(
        self, raw: Tensor, anon: Tensor, masks: KprMasks, keys: Tensor | None, level: float
    ) -> dict[str, Tensor]:
        return self.objective(raw, anon, masks)

    def objective(self, raw: Tensor, anon: Tensor, masks: KprMasks) -> dict[str, Tensor]:
        """Generator loss terms: ``privacy``, ``structure`` and their weighted ``total``.

        privacy: mean over the head mask of SSIM(raw, anon)^2, in [0, 1]; 0 when the anonymised
        head is structurally unrelated to the raw one. Squared so that neither copying the head
        (SSIM 1) nor inverting it (SSIM -1, identity still readable) is a minimum.
        structure: mean over the skeleton mask of the squared difference of the low-passed
        images (Gaussian, ``layout_sigma`` x H): the coarse layout of the body is kept while
        texture is free to change.
        """
        check_images(raw)
        if anon.shape != raw.shape:
            raise ValueError(
                f"raw and anonymised images differ in shape: {tuple(raw.shape)} "
                f"vs {tuple(anon.shape)}"
            )
        similarity = ssim_map(raw, anon).mean(dim=1, keepdim=True)
        r = SSIM_RADIUS
        head = masks.head[..., r:-r, r:-r]  # the SSIM map covers the valid interior only
        privacy = _masked_mean(similarity.square(), head)

        sigma = self.layout_sigma * raw.shape[-2]
        layout_raw = gaussian_filter2d(raw, sigma, padding="replicate")
        layout_anon = gaussian_filter2d(anon, sigma, padding="replicate")
        structure = _masked_mean((layout_anon - layout_raw).square(), masks.skeleton)

        total = self.settings.privacy_weight * privacy + self.settings.structure_weight * structure
        return {"privacy": privacy, "structure": structure, "total": total}
