"""Privacy measures: PSNR/SSIM against scikit-image, face detection, the PNG grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data, metrics

from ppa.anonymize import AnonymizationLevels, KprAnonymizer, MosaicAnonymizer
from ppa.anonymize.measures import (
    FaceDetector,
    face_detection_rate,
    head_region_scores,
    psnr,
    save_anonymization_grid,
    ssim,
    to_uint8_images,
)
from ppa.data.noise_keys import no_noise_keys
from ppa.pose.coco import INDEX, NUM_KEYPOINTS
from ppa.pose.heatmaps import MaskSettings


def astronaut() -> torch.Tensor:
    """skimage's astronaut photo (1, 3, 512, 512) in [0, 1]."""
    return torch.from_numpy(data.astronaut()).permute(2, 0, 1).unsqueeze(0).double() / 255.0


def astronaut_keypoints() -> torch.Tensor:
    """Hand-placed COCO keypoints of the astronaut's head and shoulders (x, y, score)."""
    kp = torch.zeros(1, NUM_KEYPOINTS, 3, dtype=torch.float64)
    joints = {
        "nose": (224, 128),
        "left_eye": (243, 104),
        "right_eye": (205, 106),
        "left_ear": (265, 112),
        "right_ear": (180, 115),
        "left_shoulder": (330, 290),
        "right_shoulder": (90, 300),
    }
    for name, (x, y) in joints.items():
        kp[0, INDEX[name]] = torch.tensor([x, y, 0.9], dtype=torch.float64)
    return kp


# -- PSNR / SSIM -------------------------------------------------------------------------------
def test_psnr_hand_computed_and_masked():
    a = torch.zeros(2, 3, 8, 8)
    b = torch.full((2, 3, 8, 8), 0.1)
    assert torch.allclose(psnr(a, b), torch.full((2,), 20.0))  # MSE 0.01 -> 20 dB
    b[:, :, :, 4:] = 0.0  # right half unchanged
    left = torch.zeros(2, 1, 8, 8)
    left[..., :4] = 1.0
    assert torch.allclose(psnr(a, b, left), torch.full((2,), 20.0))
    assert torch.isinf(psnr(a, b, 1.0 - left)).all()  # identical region
    assert torch.allclose(psnr(a, b), torch.full((2,), 10 * math.log10(1 / 0.005)))
    assert torch.isnan(psnr(a, b, torch.zeros(2, 1, 8, 8))).all()  # empty region


def test_psnr_and_ssim_match_skimage():
    gen = torch.Generator().manual_seed(0)
    raw = astronaut()[..., 100:164, 150:198]  # a 64 x 48 face crop
    raw = torch.cat([raw, torch.rand(1, 3, 64, 48, generator=gen, dtype=torch.float64)])
    noisy = (raw + 0.1 * torch.randn(raw.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    blocky = MosaicAnonymizer(6, 64)(raw)
    for other in (noisy, blocky, raw):
        ours_psnr, ours_ssim = psnr(raw, other), ssim(raw, other)
        for i in range(raw.shape[0]):
            x = raw[i].permute(1, 2, 0).numpy()
            y = other[i].permute(1, 2, 0).numpy()
            assert float(ours_ssim[i]) == pytest.approx(
                metrics.structural_similarity(
                    x,
                    y,
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=1.0,
                    channel_axis=-1,
                ),
                abs=1e-9,
            )
            if other is not raw:
                assert float(ours_psnr[i]) == pytest.approx(
                    metrics.peak_signal_noise_ratio(x, y, data_range=1.0), abs=1e-9
                )
    assert torch.allclose(ssim(raw, raw), torch.ones(2, dtype=torch.float64))


def test_masked_ssim_averages_over_the_region():
    gen = torch.Generator().manual_seed(1)
    raw = torch.rand(1, 3, 40, 40, generator=gen, dtype=torch.float64)
    anon = raw.clone()
    anon[..., :, 20:] = torch.rand(1, 3, 40, 20, generator=gen, dtype=torch.float64)
    full = torch.ones(1, 1, 40, 40, dtype=torch.float64)
    assert torch.allclose(ssim(raw, anon, full), ssim(raw, anon))
    left = torch.zeros_like(full)
    left[..., :, :10] = 1.0  # far from the change
    right = torch.zeros_like(full)
    right[..., :, 30:] = 1.0
    assert float(ssim(raw, anon, left)) == pytest.approx(1.0)
    assert float(ssim(raw, anon, right)) < 0.2


def test_head_region_scores():
    raw = astronaut()[..., ::4, ::4]  # 128 x 128
    kp = astronaut_keypoints()
    kp[..., :2] /= 4
    kpr = KprAnonymizer(
        MosaicAnonymizer(24, 288),
        AnonymizationLevels(1.5, 1.0, 0.35),
        MaskSettings(0.3, 0.55, 0.05, 1.5),
    )
    result = kpr(raw, kp, no_noise_keys(1))
    scores = head_region_scores(raw, result.images, result.masks.head)
    assert set(scores) == {"head_psnr", "head_ssim", "image_psnr", "image_ssim"}
    assert all(isinstance(v, float) for v in scores.values())
    assert scores["head_ssim"] < 0.5 and scores["head_psnr"] < 25.0
    assert scores["head_ssim"] == pytest.approx(
        float(ssim(raw, result.images, result.masks.head)[0])
    )
    same = head_region_scores(raw, raw, result.masks.head)
    assert same["head_ssim"] == pytest.approx(1.0) and math.isinf(same["head_psnr"])


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="equal shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="mask must have shape"):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), torch.ones(1, 16, 16))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# -- face detection ----------------------------------------------------------------------------
def test_face_found_on_astronaut_and_hidden_by_kpr_mosaic():
    raw = astronaut()
    kpr = KprAnonymizer(
        MosaicAnonymizer(24, 288),
        AnonymizationLevels(1.5, 1.0, 0.35),
        MaskSettings(0.3, 0.55, 0.05, 1.5),
        pose_guided=True,
    )
    anon = kpr(raw, astronaut_keypoints(), no_noise_keys(1)).images
    # The search range of scikit-image's own astronaut example (wider ranges add false hits).
    detector = FaceDetector(min_size=(60, 60), max_size=(123, 123))
    raw_u8, anon_u8 = to_uint8_images(raw), to_uint8_images(anon)
    boxes = detector.detect(raw_u8)
    assert len(boxes) == 1 and boxes[0].shape[1] == 4
    # The one face found is the astronaut's (face roughly x 180-265, y 75-160).
    ((x, y, w, h),) = boxes[0]
    assert w == h
    assert 170 <= x <= 200 and 60 <= y <= 100 and 60 <= w <= 110
    assert len(detector.detect(anon_u8)[0]) == 0
    both = np.concatenate([raw_u8, anon_u8])
    assert face_detection_rate(both, detector) == 0.5


def test_detector_input_validation():
    with pytest.raises(ValueError, match="uint8"):
        FaceDetector().detect(np.zeros((1, 32, 32, 3), dtype=np.float32))
    with pytest.raises(FileNotFoundError, match="no_such_cascade"):
        FaceDetector(cascade_path="/nonexistent/no_such_cascade.xml")


# -- PNG grid ----------------------------------------------------------------------------------
def test_save_anonymization_grid(tmp_path):
    gen = torch.Generator().manual_seed(0)
    visible = torch.rand(3, 3, 16, 8, generator=gen)
    infrared = torch.rand(2, 1, 16, 8, generator=gen)  # grey IR
    anon_v = MosaicAnonymizer(4, 16)(visible)
    anon_i = MosaicAnonymizer(4, 16)(infrared)
    path = save_anonymization_grid(
        [visible, infrared],
        [anon_v, anon_i],
        tmp_path / "grid" / "samples.png",
        ["visible", "infrared"],
    )
    assert path == tmp_path / "grid" / "samples.png" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["samples.png"]  # no temp file left
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape[0] == 4 * (16 + 4) + 4  # 4 image rows
    # Cells sit right of the label column, in order; the first cell is the first raw image.
    label_width = grid.shape[1] - 3 * (8 + 4) - 4
    top, left = 4, label_width
    np.testing.assert_array_equal(
        grid[top : top + 16, left : left + 8], to_uint8_images(visible)[0]
    )
    second_row = 4 + (16 + 4)
    np.testing.assert_array_equal(
        grid[second_row : second_row + 16, left : left + 8], to_uint8_images(anon_v)[0]
    )
    ir_row = 4 + 2 * (16 + 4)
    ir = to_uint8_images(infrared)[1]
    np.testing.assert_array_equal(
        grid[ir_row : ir_row + 16, left + 12 : left + 20], np.repeat(ir, 3, axis=-1)
    )
    with pytest.raises(ValueError, match="one raw and one anonymised batch per row label"):
        save_anonymization_grid([visible], [anon_v, anon_i], tmp_path / "x.png", ["visible"])
