"""Keypoints -> KPR soft masks (head, skeleton) and per-joint Gaussian heatmaps.

Everything is batched on tensors and stays on the keypoints' device and dtype.

Coordinate convention: keypoints are continuous (x, y) positions in pixels; pixel
``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``, its centre is
``(col + 0.5, row + 0.5)``. A keypoint then maps onto a map resized by a factor ``s`` as
``(s * x, s * y)``, which is what `joint_heatmaps` does with its ``scale`` argument.

A joint counts only when its score is positive, at least ``min_confidence`` and its coordinates
are finite; every other joint is missing everywhere (masks, body scale, heatmaps).

The skeleton mask is smoothed with `ppa.pose.filters.gaussian_filter2d`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ppa.pose.coco import HEAD_JOINTS, INDEX, NUM_KEYPOINTS, SKELETON
from ppa.pose.filters import gaussian_filter2d

# Shoulder width (biacromial) of an upright adult as a fraction of the nose-to-ankle keypoint
# extent; the canonical prior (ppa.pose.prior) has 0.32 W over 0.82 H at W = H / 2, i.e. 0.195.
SHOULDER_WIDTH_PER_HEIGHT = 0.2
# A head is taller than wide; vertical semi-axis = HEAD_ASPECT x horizontal semi-axis.
HEAD_ASPECT = 1.25
# The head ellipse is 1 inside, then falls smoothly to 0 over this fraction of its semi-axes.
HEAD_FEATHER = 0.25

_LEFT_SHOULDER = INDEX["left_shoulder"]
_RIGHT_SHOULDER = INDEX["right_shoulder"]


# --------------------------------------------------------------------------------------------
# Keypoint validation and body scale
# --------------------------------------------------------------------------------------------
def check_keypoints(keypoints: Tensor) -> None:
    """Raise if ``keypoints`` is not a floating (B, 17, 3) tensor of x, y, score."""
    if not isinstance(keypoints, Tensor):
        raise TypeError(f"keypoints must be a torch.Tensor, got {type(keypoints).__name__}")
    if keypoints.ndim != 3 or tuple(keypoints.shape[1:]) != (NUM_KEYPOINTS, 3):
        raise ValueError(
            f"keypoints must have shape (B, {NUM_KEYPOINTS}, 3) (x, y, score), "
            f"got {tuple(keypoints.shape)}"
        )
    if not keypoints.is_floating_point():
        raise TypeError(f"keypoints must be a floating tensor, got {keypoints.dtype}")


def _check_size(height: int, width: int) -> None:
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"mask size must be positive, got height={height}, width={width}")


def confident_joints(keypoints: Tensor, min_confidence: float) -> tuple[Tensor, Tensor]:
    """Split keypoints into ``xy`` (B, 17, 2), zero where missing, and ``valid`` (B, 17) bool."""
    check_keypoints(keypoints)
    xy, score = keypoints[..., :2], keypoints[..., 2]
    # A score of 0 always means "missing" (the batch contract), whatever min_confidence says.
    valid = (score > 0) & (score >= min_confidence) & torch.isfinite(xy).all(dim=-1)
    # Zero the missing coordinates so NaN/inf placeholders never leak into sums.
    xy = torch.where(valid.unsqueeze(-1), xy, torch.zeros_like(xy))
    return xy, valid


def _shoulder_width(xy: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Shoulder distance (B,) (0 where unknown) and whether both shoulders are confident (B,)."""
    known = valid[:, _LEFT_SHOULDER] & valid[:, _RIGHT_SHOULDER]
    width = torch.linalg.vector_norm(xy[:, _LEFT_SHOULDER] - xy[:, _RIGHT_SHOULDER], dim=-1)
    return width * known, known


def body_height(xy: Tensor, valid: Tensor) -> Tensor:
    """Body height (B,) estimated from the confident joints, 0 when nothing gives a scale.

    The larger side of the confident joints' bounding box, but at least the height implied by
    the shoulder width: a partly visible body (legs occluded) still gets a full-body scale.
    """
    inf = float("inf")
    lo = torch.where(valid.unsqueeze(-1), xy, inf).amin(dim=1)
    hi = torch.where(valid.unsqueeze(-1), xy, -inf).amax(dim=1)
    extent = torch.where(valid.any(dim=1, keepdim=True), hi - lo, torch.zeros_like(hi))
    shoulder, _ = _shoulder_width(xy, valid)
    return torch.maximum(extent.amax(dim=-1), shoulder / SHOULDER_WIDTH_PER_HEIGHT)


def _pixel_centres(height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates shaped for broadcasting: ys (1, H, 1), xs (1, 1, W)."""
    ys = torch.arange(height, device=like.device, dtype=like.dtype) + 0.5
    xs = torch.arange(width, device=like.device, dtype=like.dtype) + 0.5
    return ys.view(1, height, 1), xs.view(1, 1, width)


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------
def head_mask(
    keypoints: Tensor,
    height: int,
    width: int,
    *,
    min_confidence: float,
    head_scale: float,
    aspect: float = HEAD_ASPECT,
    feather: float = HEAD_FEATHER,
) -> Tensor:
    """Soft head ellipse (B, 1, H, W) in [0, 1] over the confident nose/eyes/ears.

    Horizontal semi-axis ``head_scale`` x shoulder width (shoulder width estimated from the body
    height when a shoulder is missing), vertical semi-axis ``aspect`` times that, both grown
    together when needed so the ellipse contains every confident head joint. The mask is 1
    inside the ellipse and falls smoothly to 0 at ``1 + feather`` times the semi-axes.
    Centred on the mean of the confident head joints; with no head joint but both shoulders, it
    sits on the shoulder midpoint, its lower edge on the shoulder line (image up = head side,
    as in upright pedestrian crops). Zero when neither is available, or when no joint gives a
    scale (a lone head joint).
    """
    _check_size(height, width)
    if head_scale <= 0 or aspect <= 0 or feather <= 0:
        raise ValueError(
            f"head_scale, aspect and feather must be positive, got "
            f"{head_scale}, {aspect}, {feather}"
        )
    xy, valid = confident_joints(keypoints, min_confidence)
    tiny = torch.finfo(xy.dtype).tiny
    head_idx = list(HEAD_JOINTS)
    head_xy, head_valid = xy[:, head_idx], valid[:, head_idx]
    num_head = head_valid.sum(dim=1)
    has_head = num_head > 0
    head_centre = (head_xy * head_valid.unsqueeze(-1)).sum(dim=1)
    head_centre = head_centre / num_head.clamp(min=1).unsqueeze(-1).to(xy.dtype)

    shoulder, shoulders_known = _shoulder_width(xy, valid)
    estimated = SHOULDER_WIDTH_PER_HEIGHT * body_height(xy, valid)
    scale = torch.where(shoulders_known, shoulder, estimated)
    semi_x = head_scale * scale
    semi_y = aspect * semi_x
    # Grow the ellipse (keeping its shape) until it contains every confident head joint.
    safe_x, safe_y = semi_x.clamp(min=tiny), semi_y.clamp(min=tiny)
    offset = head_xy - head_centre.unsqueeze(1)
    joint_radius = torch.sqrt(
        (offset[..., 0] / safe_x[:, None]) ** 2 + (offset[..., 1] / safe_y[:, None]) ** 2
    )
    counted = head_valid & (semi_x > 0).unsqueeze(-1)  # no scale: nothing to grow (no mask)
    joint_radius = torch.where(counted, joint_radius, torch.zeros_like(joint_radius))
    grow = joint_radius.amax(dim=1).clamp(min=1.0)
    semi_x, semi_y = semi_x * grow, semi_y * grow

    shoulder_mid = 0.5 * (xy[:, _LEFT_SHOULDER] + xy[:, _RIGHT_SHOULDER])
    above_shoulders = torch.stack([shoulder_mid[:, 0], shoulder_mid[:, 1] - semi_y], dim=-1)
    centre = torch.where(has_head.unsqueeze(-1), head_centre, above_shoulders)
    present = (has_head | shoulders_known) & (semi_x > 0) & (semi_y > 0)
    # Unit axes where absent keep the division finite; `present` zeroes those masks.
    semi_x = torch.where(present, semi_x, torch.ones_like(semi_x))
    semi_y = torch.where(present, semi_y, torch.ones_like(semi_y))

    ys, xs = _pixel_centres(height, width, xy)
    dx = (xs - centre[:, 0, None, None]) / semi_x[:, None, None]
    dy = (ys - centre[:, 1, None, None]) / semi_y[:, None, None]
    radius = torch.sqrt(dx * dx + dy * dy)
    t = ((radius - 1.0) / feather).clamp(0.0, 1.0)
    mask = 1.0 - t * t * (3.0 - 2.0 * t)  # smoothstep: 1 inside, C1-smooth edge
    return (mask * present[:, None, None]).unsqueeze(1)


def _segment_distance_sq(xs: Tensor, ys: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Squared distance (B, H, W) from each pixel centre to the segment start -> end."""
    direction = end - start
    length_sq = (direction * direction).sum(dim=-1).clamp(min=torch.finfo(start.dtype).tiny)
    rel_x = xs - start[:, 0, None, None]  # (B, 1, W)
    rel_y = ys - start[:, 1, None, None]  # (B, H, 1)
    dir_x, dir_y = direction[:, 0, None, None], direction[:, 1, None, None]
    along = ((rel_x * dir_x + rel_y * dir_y) / length_sq[:, None, None]).clamp(0.0, 1.0)
    off_x = rel_x - along * dir_x
    off_y = rel_y - along * dir_y
    return off_x * off_x + off_y * off_y


def _limb_windows(
    xy: Tensor, valid: Tensor, reach: Tensor, height: int, width: int
) -> list[tuple[int, int, int, int] | None]:
    """Per `SKELETON` limb, the pixel window ``(row0, row1, col0, col1)`` (end-exclusive) that
    holds every pixel centre closer than ``reach`` (B,) to that limb in any image of the batch;
    None where no image has the limb. Costs one device-to-host copy of (14, 4) numbers.
    """
    starts = torch.tensor([a for a, _ in SKELETON], device=xy.device)
    ends = torch.tensor([b for _, b in SKELETON], device=xy.device)
    present = (valid[:, starts] & valid[:, ends]).unsqueeze(-1)  # (B, L, 1)
    pad = reach[:, None, None]
    lo = torch.minimum(xy[:, starts], xy[:, ends]) - pad  # (B, L, 2) x, y
    hi = torch.maximum(xy[:, starts], xy[:, ends]) + pad
    lo = torch.where(present, lo, float("inf")).amin(dim=0)  # (L, 2): union over the batch
    hi = torch.where(present, hi, float("-inf")).amax(dim=0)
    windows: list[tuple[int, int, int, int] | None] = []
    for (x_lo, y_lo), (x_hi, y_hi) in zip(lo.tolist(), hi.tolist(), strict=True):
        if not x_lo <= x_hi:  # no image has this limb (inf > -inf)
            windows.append(None)
            continue
        # Pixel c has its centre at c + 0.5; one extra pixel each side absorbs rounding.
        c0, c1 = max(0, math.floor(x_lo - 0.5) - 1), min(width, math.ceil(x_hi - 0.5) + 2)
        r0, r1 = max(0, math.floor(y_lo - 0.5) - 1), min(height, math.ceil(y_hi - 0.5) + 2)
        windows.append((r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None)
    return windows


def skeleton_mask(
    keypoints: Tensor,
    height: int,
    width: int,
    *,
    min_confidence: float,
    limb_width: float,
    smooth_sigma: float,
    windowed: bool | None = None,
) -> Tensor:
    """Limb mask (B, 1, H, W) in [0, 1]: COCO skeleton segments between confident joints.

    Each limb is a capsule of half-width ``limb_width`` x body height (see `body_height`), drawn
    anti-aliased (one-pixel linear edge), unioned over limbs, then Gaussian-smoothed with
    ``smooth_sigma`` pixels (replicate padding, so limbs touching the border stay whole).

    ``windowed`` (default: on for CPU tensors) evaluates each limb only inside the window of
    pixels it can reach in some image of the batch (`_limb_windows`): the same numbers, bit
    for bit, at a fraction of the work, for one device-to-host copy per call (which is why it
    is off by default on GPUs, where the full-frame pass is cheap and a sync is not).
    """
    _check_size(height, width)
    if limb_width < 0 or smooth_sigma < 0:
        raise ValueError(
            f"limb_width and smooth_sigma must be >= 0, got {limb_width}, {smooth_sigma}"
        )
    xy, valid = confident_joints(keypoints, min_confidence)
    half_width = limb_width * body_height(xy, valid)
    ys, xs = _pixel_centres(height, width, xy)
    inf = float("inf")
    nearest_sq = xy.new_full((xy.shape[0], height, width), inf)
    if windowed is None:
        windowed = xy.device.type == "cpu"
    # A pixel at distance >= half_width + 0.5 from a limb gets nothing from it (see `mask`).
    windows = (
        _limb_windows(xy, valid, half_width + 0.5, height, width)
        if windowed
        else [(0, height, 0, width)] * len(SKELETON)
    )
    # All limbs of an image share one half-width, so the union of the capsules is a function of
    # the distance to the nearest limb. A loop over the 14 limbs, each vectorised over batch and
    # pixels, keeps memory at one (B, H, W) map instead of (B, 14, H, W).
    for (a, b), window in zip(SKELETON, windows, strict=True):
        if window is None:
            continue
        r0, r1, c0, c1 = window
        present = (valid[:, a] & valid[:, b])[:, None, None]
        distance_sq = torch.where(
            present, _segment_distance_sq(xs[..., c0:c1], ys[:, r0:r1], xy[:, a], xy[:, b]), inf
        )
        region = nearest_sq[:, r0:r1, c0:c1]
        torch.minimum(region, distance_sq, out=region)
    mask = (half_width[:, None, None] + 0.5 - torch.sqrt(nearest_sq)).clamp(0.0, 1.0)
    return gaussian_filter2d(mask.unsqueeze(1), smooth_sigma, padding="replicate")


@dataclass(frozen=True)
class KprMasks:
    """Soft KPR masks (B, 1, H, W): ``head`` + ``skeleton`` <= 1 everywhere."""

    head: Tensor
    skeleton: Tensor

    @property
    def rest(self) -> Tensor:
        """Weight of everything else (background, clothing texture): 1 - head - skeleton."""
        return (1.0 - self.head - self.skeleton).clamp(min=0.0)


@dataclass(frozen=True)
class MaskSettings:
    """The pose settings that shape the KPR masks (``configs/pose/*.yaml``)."""

    min_confidence: float
    head_scale: float
    limb_width: float
    smooth_sigma: float

    @classmethod
    def from_config(cls, pose_cfg: Mapping[str, Any]) -> MaskSettings:
        """Read ``pose.{min_confidence, head_scale, limb_width, smooth_sigma}``."""
        values = {}
        for key in ("min_confidence", "head_scale", "limb_width", "smooth_sigma"):
            if key not in pose_cfg:
                raise KeyError(f"missing config key pose.{key}")
            values[key] = float(pose_cfg[key])
        return cls(**values)


def kpr_masks(
    keypoints: Tensor,
    height: int,
    width: int,
    *,
    min_confidence: float,
    head_scale: float,
    limb_width: float,
    smooth_sigma: float,
) -> KprMasks:
    """Head and skeleton masks of (height, width) images; the skeleton yields to the head.

    ``skeleton`` is reduced to ``min(skeleton, 1 - head)``, so the head is always anonymised
    at full strength and the masks sum to at most 1. All-missing keypoints give empty masks.
    """
    head = head_mask(keypoints, height, width, min_confidence=min_confidence, head_scale=head_scale)
    skeleton = skeleton_mask(
        keypoints,
        height,
        width,
        min_confidence=min_confidence,
        limb_width=limb_width,
        smooth_sigma=smooth_sigma,
    )
    return KprMasks(head=head, skeleton=torch.minimum(skeleton, 1.0 - head))


# --------------------------------------------------------------------------------------------
# Per-joint heatmaps (for keypoint-pooled features)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JointHeatmaps:
    """Per-joint Gaussian heatmaps (B, 17, h, w), peak 1, and joint weights (B, 17)."""

    heatmaps: Tensor
    weights: Tensor


def joint_heatmaps(
    keypoints: Tensor,
    height: int,
    width: int,
    *,
    sigma: float,
    min_confidence: float,
    scale: float = 1.0,
) -> JointHeatmaps:
    """Gaussian heatmap per joint on a (height, width) map, e.g. the trunk's feature map.

    ``scale`` maps keypoint pixels to map pixels (feature-map height / input height, i.e.
    1 / stride). ``sigma`` is a fraction of the map height (``pose.heatmap_sigma``), so the
    same setting works at every resolution. A joint counts when it is confident and its scaled
    position lies inside the map; other joints get an all-zero heatmap and weight 0. Weights of
    counted joints are their scores (clipped to [0, 1]).
    """
    _check_size(height, width)
    if sigma <= 0 or scale <= 0:
        raise ValueError(f"heatmap sigma and scale must be positive, got {sigma}, {scale}")
    xy, valid = confident_joints(keypoints, min_confidence)
    xy = xy * scale
    x, y = xy[..., 0], xy[..., 1]
    valid = valid & (x >= 0) & (x < width) & (y >= 0) & (y < height)
    sigma_px = sigma * height
    ys, xs = _pixel_centres(height, width, xy)  # (1, H, 1), (1, 1, W)
    # Separable: the 2-D Gaussian is the outer product of a row and a column profile.
    gy = torch.exp(-0.5 * ((ys.view(1, 1, height, 1) - y[..., None, None]) / sigma_px) ** 2)
    gx = torch.exp(-0.5 * ((xs.view(1, 1, 1, width) - x[..., None, None]) / sigma_px) ** 2)
    heatmaps = gy * gx * valid[..., None, None]
    weights = keypoints[..., 2].clamp(0.0, 1.0).nan_to_num(0.0) * valid
    return JointHeatmaps(heatmaps=heatmaps, weights=weights)
