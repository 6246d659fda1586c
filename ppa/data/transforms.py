"""Image + keypoint transforms: resize, zero-pad and random crop, horizontal flip.

Images come out as float32 tensors (3, H, W) in [0, 1], NOT normalised: the anonymisers work
on [0, 1] images; `normalize` runs afterwards, batched on the device.

Keypoints use the pixel-centre convention of OpenCV's resize (pixel i covers [i - 0.5,
i + 0.5)): resizing maps x to (x + 0.5) * W_out / W_in - 0.5, and a flip maps x to W - 1 - x.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from ppa.data.channel_augment import ChannelAugment
from ppa.pose.coco import FLIP_PERMUTATION, NUM_KEYPOINTS

_FLIP_PERMUTATION = np.asarray(FLIP_PERMUTATION, dtype=np.int64)
# Half a pixel: keypoints within the outer pixels' area still count as inside the image.
_HALF_PIXEL = 0.5
# ITU-R BT.601 luma weights (what PIL's convert("L") uses).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class ReidTransform:
    """Resize to (height, width); then, if `pad` > 0, zero-pad by `pad` px on every side and
    crop back at a random offset; then flip horizontally with probability `flip`; then, with
    probability `grayscale`, replace the colours by their luminance (3 equal channels).

    Grayscale is the usual visible-infrared channel augmentation: a visible image stripped of
    colour looks like an infrared one, which pushes the encoder toward shape and pattern
    cues that both modalities share (infrared images are unchanged by it).

    Randomness comes only from the `rng` passed in (drawn in this order: crop top, crop left,
    flip, grayscale), so a sample is reproducible from its augmentation seed. Joints that end
    up outside the image get score 0; joints with a NaN/inf value become (0, 0, 0).
    """

    height: int
    width: int
    pad: int = 0
    flip: float = 0.0
    grayscale: float = 0.0
    channels: ChannelAugment | None = None  # channel augmentation and random erasing, last

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"transform size must be positive, got {self.height}x{self.width}")
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0, got {self.pad}")
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {self.flip}")
        if not 0.0 <= self.grayscale <= 1.0:
            raise ValueError(f"grayscale probability must be in [0, 1], got {self.grayscale}")

    @property
    def is_random(self) -> bool:
        return (
            self.pad > 0
            or self.flip > 0.0
            or self.grayscale > 0.0
            or (self.channels is not None and self.channels.is_random)
        )

    def __call__(
        self,
        image: np.ndarray,
        keypoints: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(H0, W0, 3) uint8 image + (17, 3) keypoints in its pixels -> (3, H, W) float32
        tensor in [0, 1] + (17, 3) float32 keypoints in network-input pixels."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        points = np.array(keypoints, dtype=np.float32, copy=True)
        if points.shape != (NUM_KEYPOINTS, 3):
            raise ValueError(f"expected keypoints of shape (17, 3), got {points.shape}")
        if self.is_random and rng is None:
            raise ValueError("a random transform (pad, flip or grayscale) needs an rng")

        in_h, in_w = image.shape[:2]
        out = _resize(image, self.height, self.width)
        points[:, 0] = (points[:, 0] + _HALF_PIXEL) * (self.width / in_w) - _HALF_PIXEL
        points[:, 1] = (points[:, 1] + _HALF_PIXEL) * (self.height / in_h) - _HALF_PIXEL

        if self.pad > 0:
            assert rng is not None
            top = int(rng.integers(0, 2 * self.pad + 1))
            left = int(rng.integers(0, 2 * self.pad + 1))
            # Cropping the padded image at (top, left) shifts content by (pad - top, pad - left).
            shift_y, shift_x = self.pad - top, self.pad - left
            out = _shift(out, shift_y, shift_x)
            points[:, 0] += shift_x
            points[:, 1] += shift_y

        if self.flip > 0.0:
            assert rng is not None
            if rng.random() < self.flip:
                out = out[:, ::-1]
                points[:, 0] = (self.width - 1) - points[:, 0]
                points = points[_FLIP_PERMUTATION]

        if self.grayscale > 0.0:
            assert rng is not None
            if rng.random() < self.grayscale:
                luma = out.astype(np.float32) @ _LUMA
                out = np.repeat(
                    np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=2
                )

        if self.channels is not None and self.channels.is_random:
            assert rng is not None
            out = self.channels(out, rng)

        # A cache entry with NaN/inf coordinates or score (a broken pose backend) is a missing
        # joint: zeroed, so no non-finite value reaches the masks, heatmaps or losses.
        broken = ~np.isfinite(points).all(axis=1)
        points[broken] = 0.0
        outside = (
            broken
            | (points[:, 0] < -_HALF_PIXEL)
            | (points[:, 0] > self.width - _HALF_PIXEL)
            | (points[:, 1] < -_HALF_PIXEL)
            | (points[:, 1] > self.height - _HALF_PIXEL)
        )
        points[outside, 2] = 0.0
        tensor = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
        return tensor.to(torch.float32).div_(255.0), torch.from_numpy(points)


def build_train_transform(input_cfg: Any, augment_cfg: Any) -> ReidTransform:
    """Training transform from ``cfg.input`` (height, width) and ``cfg.train.augment``."""
    channels = ChannelAugment.from_config(augment_cfg)
    return ReidTransform(
        height=int(input_cfg.height),
        width=int(input_cfg.width),
        pad=int(augment_cfg.pad),
        flip=float(augment_cfg.flip),
        grayscale=float(getattr(augment_cfg, "grayscale", 0.0)),
        channels=channels if channels.is_random else None,
    )


def build_eval_transform(input_cfg: Any) -> ReidTransform:
    """Evaluation transform: resize only."""
    return ReidTransform(height=int(input_cfg.height), width=int(input_cfg.width))


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(images - mean) / std per channel, for a (B, C, H, W) batch on any device."""
    if images.ndim != 4 or images.shape[1] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"normalize expects (B, {len(mean)}, H, W) images and matching "
            f"mean/std, got images {tuple(images.shape)}, mean {list(mean)}, "
            f"std {list(std)}"
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"normalize std must be positive, got {list(std)}")
    dtype = images.dtype if images.is_floating_point() else torch.float32
    shape = (1, len(mean), 1, 1)
    mean_t = torch.as_tensor(mean, dtype=dtype, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=dtype, device=images.device).view(shape)
    return (images.to(dtype) - mean_t) / std_t


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[0] == height and image.shape[1] == width:
        return image
    # Area averaging when shrinking avoids aliasing; bilinear when enlarging.
    shrinking = height < image.shape[0] or width < image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[y, x] = image[y - dy, x - dx], zero where that falls outside the image.

    Shifts may exceed the image size (a pad larger than the input): the result is then all
    zeros.
    """
    height, width = image.shape[:2]
    out = np.zeros_like(image)
    top, bottom = min(max(dy, 0), height), min(max(height + dy, 0), height)
    left, right = min(max(dx, 0), width), min(max(width + dx, 0), width)
    if bottom > top and right > left:
        out[top:bottom, left:right] = image[top - dy : bottom - dy, left - dx : right - dx]
    return out
