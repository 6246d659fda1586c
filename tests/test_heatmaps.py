"""KPR masks and joint heatmaps: geometry hand-checked on small maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from ppa.pose.coco import INDEX, NUM_KEYPOINTS
from ppa.pose.filters import filter_matrix, gaussian_filter2d
from ppa.pose.heatmaps import (
    HEAD_ASPECT,
    MaskSettings,
    body_height,
    confident_joints,
    head_mask,
    joint_heatmaps,
    kpr_masks,
    skeleton_mask,
)
from ppa.pose.prior import canonical_keypoints

SETTINGS = {"min_confidence": 0.3, "head_scale": 0.55, "limb_width": 0.05, "smooth_sigma": 1.5}


def keypoints(points: dict[str, tuple[float, float]], score: float = 1.0) -> torch.Tensor:
    """(1, 17, 3) keypoints with the named joints at (x, y); every other joint missing."""
    kp = torch.zeros(1, NUM_KEYPOINTS, 3)
    for name, (x, y) in points.items():
        kp[0, INDEX[name]] = torch.tensor([x, y, score])
    return kp


def standing_person(height: int = 96, width: int = 48) -> torch.Tensor:
    return torch.from_numpy(canonical_keypoints(height, width, score=0.9)).unsqueeze(0)


def pixel(mask: torch.Tensor, x: float, y: float) -> float:
    """Mask value at the pixel containing continuous point (x, y)."""
    return float(mask[0, 0, int(y), int(x)])


def smoothstep_falloff(r: float, feather: float = 0.25) -> float:
    t = min(max((r - 1.0) / feather, 0.0), 1.0)
    return 1.0 - t * t * (3.0 - 2.0 * t)


def test_masks_cover_the_right_joints():
    kp = standing_person()
    masks = kpr_masks(kp, 96, 48, **SETTINGS)
    assert masks.head.shape == masks.skeleton.shape == (1, 1, 96, 48)
    xy = kp[0, :, :2]
    for joint in ("nose", "left_eye", "right_eye", "left_ear", "right_ear"):
        assert pixel(masks.head, *xy[INDEX[joint]]) == pytest.approx(1.0)
    for joint in ("left_ankle", "right_ankle", "left_knee", "left_hip"):
        assert pixel(masks.head, *xy[INDEX[joint]]) == 0.0
    shin = 0.5 * (xy[INDEX["left_knee"]] + xy[INDEX["left_ankle"]])
    assert pixel(masks.skeleton, *shin) > 0.95
    thigh = 0.5 * (xy[INDEX["right_hip"]] + xy[INDEX["right_knee"]])
    assert pixel(masks.skeleton, *thigh) > 0.95
    # Far from every limb: the bottom corners and the top corners beside the head.
    for x, y in ((1, 94), (46, 94), (1, 1), (46, 1)):
        assert pixel(masks.skeleton, x, y) < 1e-3
        assert pixel(masks.head, x, y) == 0.0
    total = masks.head + masks.skeleton
    assert float(total.max()) <= 1.0 + 1e-6
    assert float(masks.head.min()) >= 0.0 and float(masks.skeleton.min()) >= 0.0
    assert torch.allclose(masks.rest, 1.0 - total, atol=1e-6)


def test_head_ellipse_hand_computed():
    # Shoulders 20 px apart -> horizontal semi-axis 0.5 * 20 = 10, vertical 12.5.
    kp = keypoints(
        {"nose": (30.5, 20.5), "left_shoulder": (40.5, 40.5), "right_shoulder": (20.5, 40.5)}
    )
    mask = head_mask(kp, 64, 64, min_confidence=0.3, head_scale=0.5)
    assert pixel(mask, 30, 20) == 1.0
    assert pixel(mask, 39, 20) == 1.0  # dx = 9  -> r = 0.9
    assert pixel(mask, 41, 20) == pytest.approx(smoothstep_falloff(1.1), abs=1e-6)
    assert pixel(mask, 43, 20) == 0.0  # r = 1.3 > 1.25
    assert pixel(mask, 30, 32) == 1.0  # dy = 12 -> r = 0.96
    assert pixel(mask, 30, 35) == pytest.approx(smoothstep_falloff(15 / 12.5), abs=1e-6)
    assert pixel(mask, 30, 5) == pytest.approx(smoothstep_falloff(15 / 12.5), abs=1e-6)
    assert HEAD_ASPECT == 1.25


def test_head_falls_back_above_the_shoulders():
    shoulders = {"left_shoulder": (40.5, 40.5), "right_shoulder": (20.5, 40.5)}
    mask = head_mask(keypoints(shoulders), 64, 64, min_confidence=0.3, head_scale=0.5)
    # Centre = shoulder midpoint moved up by the vertical semi-axis: (30.5, 28).
    assert pixel(mask, 30.5, 28.0) == 1.0
    assert pixel(mask, 30.5, 40.5) == 1.0  # dy = 12.5: on the ellipse
    assert pixel(mask, 30.5, 42.5) == pytest.approx(smoothstep_falloff(14.5 / 12.5), abs=1e-6)
    assert pixel(mask, 30.5, 50.5) == 0.0
    # A low-confidence nose somewhere else changes nothing: it is missing.
    bogus = keypoints(shoulders)
    bogus[0, INDEX["nose"]] = torch.tensor([5.0, 60.0, 0.1])
    assert torch.equal(head_mask(bogus, 64, 64, min_confidence=0.3, head_scale=0.5), mask)


def test_head_without_shoulders_is_scaled_by_body_and_covers_head_joints():
    # Head joints only: the body extent is tiny, so the ellipse is the spread of the joints.
    kp = keypoints({"nose": (30.5, 20.5), "left_ear": (38.5, 18.5), "right_ear": (22.5, 18.5)})
    mask = head_mask(kp, 64, 64, min_confidence=0.3, head_scale=0.5)
    for x, y in ((30.5, 20.5), (38.5, 18.5), (22.5, 18.5)):
        assert pixel(mask, x, y) > 0.99
    # Head joints + hips: body height = 40 -> estimated shoulder width 8 -> semi-axis >= 4.
    kp = keypoints({"nose": (30.5, 10.5), "left_hip": (34.5, 50.5), "right_hip": (26.5, 50.5)})
    mask = head_mask(kp, 64, 64, min_confidence=0.3, head_scale=0.5)
    assert pixel(mask, 30.5 + 3.5, 10.5) == 1.0
    assert pixel(mask, 30.5 + 6.5, 10.5) == 0.0  # dx = 7 -> r = 1.75


@pytest.mark.parametrize(
    "points",
    [
        {},  # nothing
        {"left_shoulder": (10.0, 30.0)},  # one shoulder only
        {"left_knee": (10.0, 30.0), "left_ankle": (10.0, 50.0)},  # legs only
        {"nose": (20.0, 20.0)},  # a lone head joint gives no scale
    ],
)
def test_head_mask_empty_without_head_or_shoulders(points):
    mask = head_mask(keypoints(points), 64, 48, min_confidence=0.3, head_scale=0.55)
    assert float(mask.abs().max()) == 0.0


def test_all_missing_gives_empty_masks_and_heatmaps():
    kp = standing_person()
    kp[..., 2] = 0.2  # everything below min_confidence
    masks = kpr_masks(kp, 96, 48, **SETTINGS)
    assert float(masks.head.max()) == 0.0 and float(masks.skeleton.max()) == 0.0
    assert torch.equal(masks.rest, torch.ones_like(masks.rest))
    maps = joint_heatmaps(kp, 24, 12, sigma=0.06, min_confidence=0.3, scale=0.25)
    assert float(maps.heatmaps.max()) == 0.0 and float(maps.weights.max()) == 0.0


def test_nan_and_zero_score_joints_are_missing():
    kp = standing_person()
    kp[0, INDEX["nose"], :2] = float("nan")
    kp[0, INDEX["left_eye"], 2] = 0.0
    xy, valid = confident_joints(kp, min_confidence=0.0)
    assert not valid[0, INDEX["nose"]] and not valid[0, INDEX["left_eye"]]
    assert bool(valid[0, INDEX["right_eye"]])
    assert torch.isfinite(xy).all()
    masks = kpr_masks(kp, 96, 48, **SETTINGS)
    assert torch.isfinite(masks.head).all() and torch.isfinite(masks.skeleton).all()


def test_skeleton_limb_hand_computed():
    # One shin, 20 px long -> body height 20, half-width 0.1 * 20 = 2 px, 1-px linear edge.
    kp = keypoints({"left_knee": (10.5, 10.5), "left_ankle": (10.5, 30.5)})
    mask = skeleton_mask(kp, 40, 24, min_confidence=0.3, limb_width=0.1, smooth_sigma=0.0)
    assert pixel(mask, 10.5, 20.5) == 1.0  # on the segment
    assert pixel(mask, 11.5, 20.5) == 1.0  # d = 1
    assert pixel(mask, 12.5, 20.5) == 0.5  # d = 2 = half-width: half covered
    assert pixel(mask, 13.5, 20.5) == 0.0  # d = 3
    assert pixel(mask, 10.5, 32.5) == 0.5  # 2 px beyond the ankle: rounded cap
    assert pixel(mask, 10.5, 34.5) == 0.0
    assert float(mask[..., :, 15:].max()) == 0.0
    # A low-confidence knee removes the limb.
    kp[0, INDEX["left_knee"], 2] = 0.1
    mask = skeleton_mask(kp, 40, 24, min_confidence=0.3, limb_width=0.1, smooth_sigma=0.0)
    assert float(mask.max()) == 0.0


def test_skeleton_smoothing_is_a_gaussian_of_the_sharp_mask():
    kp = standing_person(64, 32)
    sharp = skeleton_mask(kp, 64, 32, min_confidence=0.3, limb_width=0.05, smooth_sigma=0.0)
    smooth = skeleton_mask(kp, 64, 32, min_confidence=0.3, limb_width=0.05, smooth_sigma=1.5)
    expected = ndimage.gaussian_filter(
        sharp[0, 0].double().numpy(), 1.5, mode="nearest", truncate=3.0
    )
    np.testing.assert_allclose(smooth[0, 0].numpy(), expected, atol=1e-5)


def test_body_height_uses_extent_or_shoulders():
    kp = keypoints({"nose": (10.0, 5.0), "left_ankle": (12.0, 85.0)})
    xy, valid = confident_joints(kp, 0.3)
    assert float(body_height(xy, valid)[0]) == pytest.approx(80.0)
    # Upper body only: shoulders 20 px apart imply 100 px, more than the 30 px extent.
    kp = keypoints(
        {
            "nose": (30.0, 10.0),
            "left_shoulder": (40.0, 30.0),
            "right_shoulder": (20.0, 30.0),
            "left_elbow": (42.0, 40.0),
        }
    )
    xy, valid = confident_joints(kp, 0.3)
    assert float(body_height(xy, valid)[0]) == pytest.approx(20.0 / 0.2)


def test_batch_elements_are_independent_and_dtype_follows_input():
    person, empty = standing_person(), torch.zeros(1, NUM_KEYPOINTS, 3)
    batch = torch.cat([person, empty, person]).double()
    masks = kpr_masks(batch, 96, 48, **SETTINGS)
    alone = kpr_masks(person.double(), 96, 48, **SETTINGS)
    assert masks.head.dtype == torch.float64
    assert torch.allclose(masks.head[0], alone.head[0]) and torch.allclose(
        masks.head[2], alone.head[0]
    )
    assert torch.allclose(masks.skeleton[0], alone.skeleton[0])
    assert float(masks.head[1].max()) == 0.0 and float(masks.skeleton[1].max()) == 0.0


def test_joint_heatmap_peak_sigma_scale_and_weights():
    kp = keypoints({"nose": (21.0, 11.0), "left_ankle": (40.0, 30.0)}, score=0.8)
    kp[0, INDEX["left_eye"]] = torch.tensor([10.0, 10.0, 0.2])  # below min_confidence
    kp[0, INDEX["right_eye"]] = torch.tensor([70.0, 10.0, 0.9])  # outside the map
    # Map 16 x 32 at scale 0.5: nose -> (10.5, 5.5), the centre of pixel (row 5, col 10).
    maps = joint_heatmaps(kp, 16, 32, sigma=2.0 / 16, min_confidence=0.3, scale=0.5)
    nose = maps.heatmaps[0, INDEX["nose"]]
    assert maps.heatmaps.shape == (1, NUM_KEYPOINTS, 16, 32)
    assert float(nose[5, 10]) == pytest.approx(1.0)
    assert divmod(int(nose.argmax()), 32) == (5, 10)
    assert float(nose[5, 12]) == pytest.approx(math.exp(-0.5))  # 2 px = 1 sigma
    assert float(nose[1, 10]) == pytest.approx(math.exp(-2.0))  # 4 px = 2 sigma
    assert float(nose[7, 12]) == pytest.approx(math.exp(-1.0))
    weights = maps.weights[0]
    assert float(weights[INDEX["nose"]]) == pytest.approx(0.8)
    assert float(weights[INDEX["left_ankle"]]) == pytest.approx(0.8)  # (20, 15): inside
    assert float(weights[INDEX["left_eye"]]) == 0.0
    assert float(weights[INDEX["right_eye"]]) == 0.0  # x = 35 >= 32
    assert float(maps.heatmaps[0, INDEX["left_eye"]].max()) == 0.0
    assert float(maps.heatmaps[0, INDEX["right_eye"]].max()) == 0.0
    assert float(maps.heatmaps[0, INDEX["right_hip"]].max()) == 0.0


def test_gaussian_filter_matches_scipy_mirror_including_long_kernels():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 9, 7, generator=gen, dtype=torch.float64)
    for sigma in (0.8, 2.0, 5.0):  # 5.0 -> radius 15, longer than both axes
        out = gaussian_filter2d(images, sigma, padding="reflect")
        expected = ndimage.gaussian_filter(
            images.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0
        )
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)


def test_filter_matrix_valid_and_errors():
    kernel = torch.tensor([1.0, 2.0, 3.0])
    matrix = filter_matrix(kernel, 5, "valid")
    assert torch.equal(matrix, torch.tensor([[1.0, 2, 3, 0, 0], [0, 1, 2, 3, 0], [0, 0, 1, 2, 3]]))
    # Row 0 reads samples -1, 0, 1: replicate maps -1 -> 0, reflect maps -1 -> 1.
    assert torch.equal(filter_matrix(kernel, 3, "replicate")[0], torch.tensor([3.0, 3.0, 0.0]))
    assert torch.equal(filter_matrix(kernel, 3, "reflect")[0], torch.tensor([2.0, 4.0, 0.0]))
    with pytest.raises(ValueError, match="shorter"):
        filter_matrix(kernel, 2, "valid")


@pytest.mark.parametrize("shape", [(17, 3), (1, 17, 2), (1, 18, 3)])
def test_bad_keypoint_shapes_are_rejected(shape):
    with pytest.raises(ValueError, match=r"\(B, 17, 3\)"):
        kpr_masks(torch.zeros(shape), 32, 16, **SETTINGS)


def test_mask_settings_from_config():
    from ppa.config import load_config

    cfg = load_config()
    settings = MaskSettings.from_config(cfg.pose)
    assert settings == MaskSettings(
        min_confidence=0.3, head_scale=0.55, limb_width=0.05, smooth_sigma=1.5
    )
    with pytest.raises(KeyError, match=r"pose\.head_scale"):
        MaskSettings.from_config({"min_confidence": 0.3})


@pytest.mark.parametrize(("height", "width", "seed"), [(96, 48, 0), (288, 144, 1), (17, 9, 2)])
def test_windowed_skeleton_is_bitwise_the_full_frame_one(height, width, seed):
    # The CPU fast path evaluates each limb only where it can reach: it must not change a bit.
    g = torch.Generator().manual_seed(seed)
    batch = standing_person(height, width).repeat(24, 1, 1)
    batch[..., :2] += torch.randn(24, NUM_KEYPOINTS, 2, generator=g) * 0.05 * height
    batch[:, :, 0] += (torch.rand(24, 1, generator=g) - 0.5) * width  # some limbs leave the image
    batch[..., 2] = torch.rand(24, NUM_KEYPOINTS, generator=g)  # about a third of joints missing
    batch[3] = 0.0  # an image without any joint
    batch[4, INDEX["left_knee"], :2] = batch[4, INDEX["left_ankle"], :2]  # a zero-length limb
    batch[5, INDEX["left_hip"], 0] = float("nan")
    for sigma in (0.0, 1.5):
        kwargs = {"min_confidence": 0.3, "limb_width": 0.05, "smooth_sigma": sigma}
        full = skeleton_mask(batch, height, width, windowed=False, **kwargs)
        windowed = skeleton_mask(batch, height, width, windowed=True, **kwargs)
        assert torch.equal(full, windowed)
    nobody = torch.zeros(2, NUM_KEYPOINTS, 3)
    assert float(skeleton_mask(nobody, 8, 4, windowed=True, **kwargs).max()) == 0.0
