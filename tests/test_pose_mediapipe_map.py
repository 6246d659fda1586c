"""MediaPipe's 33 landmarks -> COCO-17: the index map and the pixel/score conversion."""

from __future__ import annotations

import numpy as np
import pytest

from ppa.keypoint_extraction.mediapipe_map import (
    MEDIAPIPE_LANDMARK_NAMES,
    MEDIAPIPE_TO_COCO,
    landmarks_to_coco,
)
from ppa.pose.coco import INDEX


def test_map_selects_the_same_named_landmarks():
    # Written out by hand from MediaPipe's landmark chart (docs/pose.md has the table).
    assert MEDIAPIPE_TO_COCO == (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
    assert len(MEDIAPIPE_LANDMARK_NAMES) == 33
    assert MEDIAPIPE_LANDMARK_NAMES[MEDIAPIPE_TO_COCO[INDEX["left_ankle"]]] == "left_ankle"


def test_landmarks_become_pixels_of_the_crop_and_visibility_the_score():
    landmarks = np.zeros((33, 3), dtype=np.float32)
    landmarks[:, 0] = np.arange(33) / 100.0  # x_norm
    landmarks[:, 1] = np.arange(33) / 50.0  # y_norm
    landmarks[:, 2] = 0.5
    landmarks[0, 2] = 1.3  # nose: above 1 -> clipped
    landmarks[5, 2] = -0.2  # right eye: below 0 -> clipped
    out = landmarks_to_coco(landmarks, height=200, width=100)

    assert out.shape == (17, 3) and out.dtype == np.float32
    # left_hip <- landmark 23: x = 0.23 * 100, y = 0.46 * 200
    np.testing.assert_allclose(out[INDEX["left_hip"]], [23.0, 92.0, 0.5], rtol=1e-6)
    # right_ankle <- landmark 28
    np.testing.assert_allclose(out[INDEX["right_ankle"]], [28.0, 112.0, 0.5], rtol=1e-6)
    assert out[INDEX["nose"], 2] == 1.0
    assert out[INDEX["right_eye"], 2] == 0.0


def test_out_of_frame_landmarks_keep_their_extrapolated_position():
    landmarks = np.full((33, 3), 0.5, dtype=np.float32)
    landmarks[27] = (0.5, 1.8, 0.01)  # left ankle far below the crop
    out = landmarks_to_coco(landmarks, height=100, width=40)
    np.testing.assert_allclose(out[INDEX["left_ankle"]], [20.0, 180.0, 0.01], rtol=1e-6)


def test_wrong_shapes_and_sizes_are_rejected():
    with pytest.raises(ValueError, match=r"\(33, 3\)"):
        landmarks_to_coco(np.zeros((17, 3)), 10, 10)
    with pytest.raises(ValueError, match="positive"):
        landmarks_to_coco(np.zeros((33, 3)), 0, 10)
