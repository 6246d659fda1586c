"""Privacy measures of anonymised images: PSNR/SSIM (whole image, head region), face detection
rate, and a raw-vs-anonymised PNG grid for people to look at.

PSNR and SSIM are batched torch on [0, 1] images and follow ``skimage.metrics``: SSIM uses the
usual 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, population covariances, and
averages the SSIM map over its valid interior (5 pixels from each border) and the channels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from skimage import data
from skimage.color import rgb2gray
from skimage.feature import Cascade
from torch import Tensor

from ppa.io import atomic_write
from ppa.pose.filters import gaussian_kernel1d, separable_filter2d

logger = logging.getLogger(__name__)

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11 x 11 window
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(
            f"expected two (B, C, H, W) tensors of equal shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise TypeError(f"expected floating images in [0, 1], got {a.dtype} and {b.dtype}")


def _check_mask(mask: Tensor, images: Tensor) -> None:
    b, _, h, w = images.shape
    if mask.ndim != 4 or mask.shape[0] != b or mask.shape[1] != 1 or mask.shape[-2:] != (h, w):
        raise ValueError(f"mask must have shape ({b}, 1, {h}, {w}), got {tuple(mask.shape)}")


def _masked_image_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Per-image mean (B,) of (B, C, H, W) values over the mask (all pixels when None).

    An empty mask gives NaN for that image (there is no region to measure).
    """
    if mask is None:
        return values.flatten(1).mean(dim=1)
    weight = mask.to(values.dtype).expand_as(values)
    return (values * weight).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1)


def psnr(a: Tensor, b: Tensor, mask: Tensor | None = None, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio (B,) in dB; ``inf`` for identical images (or regions).

    With ``mask`` (B, 1, H, W) the mean squared error is weighted by the mask (NaN where the
    mask is empty).
    """
    _check_pair(a, b)
    if mask is not None:
        _check_mask(mask, a)
    mse = _masked_image_mean((a - b).square(), mask)
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim_map(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Local SSIM (B, C, H - 10, W - 10) over 11 x 11 Gaussian windows (valid positions only)."""
    _check_pair(a, b)
    h, w = a.shape[-2:]
    if min(h, w) < 2 * SSIM_RADIUS + 1:
        raise ValueError(
            f"SSIM needs images of at least {2 * SSIM_RADIUS + 1} x "
            f"{2 * SSIM_RADIUS + 1} pixels, got {h} x {w}"
        )
    kernel = gaussian_kernel1d(SSIM_SIGMA, SSIM_RADIUS, device=a.device, dtype=a.dtype)
    c = a.shape[1]
    # One filtering pass over the five local moments stacked along the channel axis.
    moments = separable_filter2d(
        torch.cat([a, b, a * a, b * b, a * b], dim=1), kernel, kernel, padding="valid"
    )
    mu_a, mu_b, aa, bb, ab = moments.split(c, dim=1)
    var_a = aa - mu_a * mu_a
    var_b = bb - mu_b * mu_b
    cov = ab - mu_a * mu_b
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    )


def ssim(a: Tensor, b: Tensor, mask: Tensor | None = None, data_range: float = 1.0) -> Tensor:
    """Mean SSIM (B,); with ``mask`` (B, 1, H, W) averaged over the mask (NaN where empty).

    The mask weights each window by its centre pixel.
    """
    if mask is not None:
        _check_mask(mask, a)
        r = SSIM_RADIUS
        mask = mask[..., r:-r, r:-r]
    return _masked_image_mean(ssim_map(a, b, data_range), mask)


def head_region_scores(raw: Tensor, anon: Tensor, head_mask: Tensor) -> dict[str, float]:
    """Batch means of PSNR/SSIM between raw and anonymised images, in the head and overall.

    Keys: ``head_psnr``, ``head_ssim``, ``image_psnr``, ``image_ssim``. Head scores average over
    the images that have a head mask (NaN when none has); a PSNR mean is ``inf`` when some
    image (region) is unchanged. Lower is more private.
    """
    _check_mask(head_mask, raw)
    scores = {
        "head_psnr": psnr(raw, anon, head_mask),
        "head_ssim": ssim(raw, anon, head_mask),
        "image_psnr": psnr(raw, anon),
        "image_ssim": ssim(raw, anon),
    }
    return {key: float(value.nanmean()) for key, value in scores.items()}


# --------------------------------------------------------------------------------------------
# Face detection
# --------------------------------------------------------------------------------------------
def to_uint8_images(images: Tensor) -> np.ndarray:
    """(B, C, H, W) float [0, 1] tensor -> (B, H, W, C) uint8 array (rounded)."""
    if images.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) images, got {tuple(images.shape)}")
    scaled = (images.detach().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


class FaceDetector:
    """Frontal-face detector that runs offline: OpenCV's LBP frontal-face cascade as bundled
    with scikit-image (``skimage.data.lbp_frontal_face_cascade_filename()``), evaluated by
    ``skimage.feature.Cascade`` (the pinned OpenCV 5 has no cascade classifier).

    ``min_size``/``max_size`` bound the face box in pixels (the cascade's window is 24 x 24);
    ``max_size=None`` allows the whole image.
    """

    def __init__(
        self,
        *,
        scale_factor: float = 1.2,
        step_ratio: float = 1.0,
        min_size: tuple[int, int] = (24, 24),
        max_size: tuple[int, int] | None = None,
        min_neighbors: int = 4,
        overlap_threshold: float = 0.5,
        cascade_path: str | os.PathLike | None = None,
    ):
        path = Path(cascade_path or data.lbp_frontal_face_cascade_filename())
        if not path.is_file():
            raise FileNotFoundError(f"face cascade file not found: {path}")
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        self.cascade_path = path
        self._cascade = Cascade(str(path))
        self.scale_factor = scale_factor
        self.step_ratio = step_ratio
        self.min_size = tuple(min_size)
        self.max_size = tuple(max_size) if max_size is not None else None
        self.min_neighbors = min_neighbors
        self.overlap_threshold = overlap_threshold

    def detect(self, images: np.ndarray) -> list[np.ndarray]:
        """Face boxes per image: one (k, 4) int array of (x, y, width, height) each.

        ``images``: uint8 (N, H, W, 3) RGB or (N, H, W) grey.
        """
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(
                f"expected uint8 (N, H, W, 3) or (N, H, W) images, got "
                f"{images.dtype} {images.shape}"
            )
        boxes = []
        for image in images:  # the cascade is a per-image CPU routine
            grey = rgb2gray(image) if image.ndim == 3 else image.astype(np.float64) / 255.0
            height, width = grey.shape
            max_size = self.max_size or (height, width)
            found = self._cascade.detect_multi_scale(
                img=np.ascontiguousarray(grey),
                scale_factor=self.scale_factor,
                step_ratio=self.step_ratio,
                min_size=self.min_size,
                max_size=max_size,
                min_neighbor_number=self.min_neighbors,
                intersection_score_threshold=self.overlap_threshold,
            )
            boxes.append(
                np.array(
                    [[d["c"], d["r"], d["width"], d["height"]] for d in found], dtype=np.int64
                ).reshape(-1, 4)
            )
        return boxes

    def detection_rate(self, images: np.ndarray) -> float:
        """Fraction of images with at least one detected face."""
        boxes = self.detect(images)
        if not boxes:
            raise ValueError("face detection rate of an empty image set is undefined")
        return sum(len(b) > 0 for b in boxes) / len(boxes)


def face_detection_rate(images: np.ndarray, detector: FaceDetector | None = None) -> float:
    """Fraction of uint8 (N, H, W, 3) images where a frontal face is found (default detector)."""
    return (detector or FaceDetector()).detection_rate(images)


# --------------------------------------------------------------------------------------------
# Visual check
# --------------------------------------------------------------------------------------------
GRID_PAD = 4  # pixels between cells


def save_anonymization_grid(
    raw: Sequence[Tensor],
    anon: Sequence[Tensor],
    path: str | os.PathLike,
    row_labels: Sequence[str],
) -> Path:
    """Write a PNG: for each group (e.g. modality) a row of raw samples over a row of their
    anonymised versions, labelled ``"<label> raw"`` / ``"<label> anonymised"``.

    ``raw[i]`` and ``anon[i]`` are (N_i, C, H, W) tensors in [0, 1] (C = 1 or 3) for group
    ``row_labels[i]``. The file is written atomically; returns its path.
    """
    if not (len(raw) == len(anon) == len(row_labels)) or not row_labels:
        raise ValueError(
            f"need one raw and one anonymised batch per row label, got "
            f"{len(raw)} raw, {len(anon)} anonymised, {len(row_labels)} labels"
        )
    groups = []
    for label, r, a in zip(row_labels, raw, anon, strict=True):
        if r.shape != a.shape or r.ndim != 4 or r.shape[1] not in (1, 3) or r.shape[0] == 0:
            raise ValueError(
                f"row {label!r}: raw {tuple(r.shape)} and anonymised "
                f"{tuple(a.shape)} must be equal non-empty (N, 1|3, H, W) batches"
            )
        groups.append((label, to_uint8_images(r), to_uint8_images(a)))

    font = ImageFont.load_default()
    texts = [f"{label} {kind}" for label, _, _ in groups for kind in ("raw", "anonymised")]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = int(max(measure.textlength(t, font=font) for t in texts)) + 2 * GRID_PAD
    cell_h = max(r.shape[1] for _, r, _ in groups)
    cell_w = max(r.shape[2] for _, r, _ in groups)
    columns = max(r.shape[0] for _, r, _ in groups)
    width = label_width + columns * (cell_w + GRID_PAD) + GRID_PAD
    height = 2 * len(groups) * (cell_h + GRID_PAD) + GRID_PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)

    row = 0
    for label, raw_images, anon_images in groups:
        for kind, images in (("raw", raw_images), ("anonymised", anon_images)):
            top = GRID_PAD + row * (cell_h + GRID_PAD)
            draw.text((GRID_PAD, top + cell_h // 2), f"{label} {kind}", fill="black", font=font)
            for col, image in enumerate(images):
                if image.shape[-1] == 1:  # grey (IR) -> RGB for the PNG
                    image = np.repeat(image, 3, axis=-1)
                left = label_width + col * (cell_w + GRID_PAD)
                canvas.paste(Image.fromarray(image), (left, top))
            row += 1

    path = Path(path)
    with atomic_write(path, fsync=False) as handle:
        canvas.save(handle, format="PNG")
    logger.info("wrote anonymisation grid %s (%d groups x %d columns)", path, len(groups), columns)
    return path
