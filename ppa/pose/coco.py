"""The COCO-17 keypoint convention used everywhere in the project."""

from __future__ import annotations

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
INDEX = {name: i for i, name in enumerate(KEYPOINT_NAMES)}

HEAD_JOINTS: tuple[int, ...] = (0, 1, 2, 3, 4)

# Limbs drawn into the skeleton mask (pairs of joint indices).
SKELETON: tuple[tuple[int, int], ...] = (
    (5, 7),
    (7, 9),
    (6, 8),
    (8, 10),  # arms
    (5, 6),
    (11, 12),
    (5, 11),
    (6, 12),  # torso
    (11, 13),
    (13, 15),
    (12, 14),
    (14, 16),  # legs
    (0, 5),
    (0, 6),  # neck
)

# Index permutation that a horizontal flip applies (left <-> right).
FLIP_PERMUTATION: tuple[int, ...] = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
