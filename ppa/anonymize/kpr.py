"""KPR: pose-guided composition of one anonymiser at three strengths."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ppa.anonymize.base import Anonymizer, check_images
from ppa.anonymize.factory import create_anonymizer
from ppa.pose.heatmaps import KprMasks, MaskSettings, check_keypoints, kpr_masks


@dataclass(frozen=True)
class AnonymizationLevels:
    """KPR's multiples of the configured strength: head, background/texture, skeleton."""

    strong: float
    medium: float
    weak: float

    def __post_init__(self) -> None:
        for key in ("strong", "medium", "weak"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"anonymizer.levels.{key} must be a finite number >= 0, got {value}"
                )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> AnonymizationLevels:
        """Read ``anonymizer.levels.{strong, medium, weak}``."""
        missing = [k for k in ("strong", "medium", "weak") if k not in cfg]
        if missing:
            raise KeyError(f"missing config key(s) anonymizer.levels.{', '.join(missing)}")
        return cls(
            strong=float(cfg["strong"]), medium=float(cfg["medium"]), weak=float(cfg["weak"])
        )


@dataclass(frozen=True)
class AnonymizedBatch:
    """Anonymised images (B, C, H, W) and the KPR masks they were composed with."""

    images: Tensor
    masks: KprMasks


class KprAnonymizer(nn.Module):
    """``x_anon = M_head A(x, strong) + M_skel A(x, weak) + (1 - M_head - M_skel) A(x, medium)``.

    With ``pose_guided=False`` the whole image gets ``A(x, medium)``; the masks are still built
    and returned (privacy measures use the head mask). Each distinct level is applied once per
    batch. An image with no confident joint has empty masks and is anonymised at medium
    strength everywhere.
    """

    def __init__(
        self,
        anonymizer: Anonymizer,
        levels: AnonymizationLevels,
        mask_settings: MaskSettings,
        pose_guided: bool = True,
    ):
        super().__init__()
        if pose_guided and anonymizer.whole_image_only:
            raise ValueError(
                f"anonymizer={anonymizer.name} anonymises the whole image at one level: use it "
                "with a method whose ppa.pose_guided is false, e.g. ppa=anon_only"
            )
        self.anonymizer = anonymizer
        self.levels = levels
        self.mask_settings = mask_settings
        self.pose_guided = bool(pose_guided)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> KprAnonymizer:
        """Build from the root config: ``anonymizer``, ``pose`` and ``ppa.pose_guided``."""
        for key in ("anonymizer", "pose", "ppa"):
            if key not in cfg:
                raise KeyError(f"missing config group {key!r}")
        if "levels" not in cfg["anonymizer"]:
            raise KeyError("missing config key anonymizer.levels")
        if "pose_guided" not in cfg["ppa"]:
            raise KeyError("missing config key ppa.pose_guided")
        return cls(
            anonymizer=create_anonymizer(cfg["anonymizer"]),
            levels=AnonymizationLevels.from_config(cfg["anonymizer"]["levels"]),
            mask_settings=MaskSettings.from_config(cfg["pose"]),
            pose_guided=bool(cfg["ppa"]["pose_guided"]),
        )

    def masks(self, keypoints: Tensor, height: int, width: int) -> KprMasks:
        """The KPR masks for (height, width) images with these keypoints."""
        s = self.mask_settings
        return kpr_masks(
            keypoints,
            height,
            width,
            min_confidence=s.min_confidence,
            head_scale=s.head_scale,
            limb_width=s.limb_width,
            smooth_sigma=s.smooth_sigma,
        )

    def forward(
        self, images: Tensor, keypoints: Tensor, keys: Tensor | None = None
    ) -> AnonymizedBatch:
        check_images(images)
        check_keypoints(keypoints)
        if keypoints.shape[0] != images.shape[0]:
            raise ValueError(f"{keypoints.shape[0]} keypoint sets for {images.shape[0]} images")
        height, width = images.shape[-2:]
        masks = self.masks(keypoints.to(device=images.device, dtype=images.dtype), height, width)

        if not self.pose_guided:
            return AnonymizedBatch(
                images=self.anonymizer(images, self.levels.medium, keys), masks=masks
            )
        # Each distinct level once (equal levels, e.g. the `none` config, share one output).
        levels = sorted({self.levels.strong, self.levels.medium, self.levels.weak})
        outputs = dict(
            zip(levels, self.anonymizer.forward_levels(images, levels, keys), strict=True)
        )
        if len(outputs) == 1:  # one level everywhere (e.g. `none`): the masks change nothing
            return AnonymizedBatch(images=outputs[levels[0]], masks=masks)
        strong, medium, weak = (
            outputs[self.levels.strong],
            outputs[self.levels.medium],
            outputs[self.levels.weak],
        )
        # In place after the first product: the same sums in the same order, two fewer
        # full-size temporaries.
        composed = masks.head * strong
        composed += masks.skeleton * weak
        composed += masks.rest * medium
        return AnonymizedBatch(images=composed.clamp(0.0, 1.0), masks=masks)

    def training_loss(
        self, images: Tensor, result: AnonymizedBatch, keys: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The trainable anonymiser's loss terms for `images` and their composed `result`."""
        return self.anonymizer.training_loss(
            images, result.images, result.masks, keys, self.levels.medium
        )

    def extra_repr(self) -> str:
        return f"levels={self.levels}, pose_guided={self.pose_guided}"
