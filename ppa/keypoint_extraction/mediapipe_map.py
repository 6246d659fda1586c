"""MediaPipe Pose's 33 landmarks -> the project's COCO-17 keypoints.

MediaPipe Pose (BlazePose) names its landmarks anatomically, like COCO, and both use the
person's own left/right (a frontal person's left shoulder is on the image's right). Every COCO
joint has a landmark of the same name, so the map is a pure selection, no interpolation:

    COCO-17            MediaPipe-33
    0  nose            0  nose
    1  left_eye        2  left_eye        (1/3 are the inner/outer eye corners)
    2  right_eye       5  right_eye       (4/6 are the inner/outer eye corners)
    3  left_ear        7  left_ear
    4  right_ear       8  right_ear
    5  left_shoulder   11 left_shoulder
    6  right_shoulder  12 right_shoulder
    7  left_elbow      13 left_elbow
    8  right_elbow     14 right_elbow
    9  left_wrist      15 left_wrist
    10 right_wrist     16 right_wrist
    11 left_hip        23 left_hip
    12 right_hip       24 right_hip
    13 left_knee       25 left_knee
    14 right_knee      26 right_knee
    15 left_ankle      27 left_ankle
    16 right_ankle     28 right_ankle

Unused: mouth corners (9, 10), hand points (17-22), heels and foot tips (29-32).
MediaPipe reports x, y normalised to the image width/height and a per-landmark `visibility`
in [0, 1] (likelihood that the landmark is in frame and not occluded); it becomes the COCO score.
"""

from __future__ import annotations

import numpy as np

from ppa.pose.coco import KEYPOINT_NAMES, NUM_KEYPOINTS

NUM_MEDIAPIPE_LANDMARKS = 33

MEDIAPIPE_LANDMARK_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye_inner",
    "left_eye",
    "left_eye_outer",
    "right_eye_inner",
    "right_eye",
    "right_eye_outer",
    "left_ear",
    "right_ear",
    "mouth_left",
    "mouth_right",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_pinky",
    "right_pinky",
    "left_index",
    "right_index",
    "left_thumb",
    "right_thumb",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "left_heel",
    "right_heel",
    "left_foot_index",
    "right_foot_index",
)

# For each COCO joint (in COCO order), the index of the MediaPipe landmark of the same name.
MEDIAPIPE_TO_COCO: tuple[int, ...] = tuple(
    MEDIAPIPE_LANDMARK_NAMES.index(name) for name in KEYPOINT_NAMES
)


def landmarks_to_coco(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Convert MediaPipe landmarks (33, 3) = (x_norm, y_norm, visibility) to COCO (17, 3).

    x, y become pixels of the (height, width) image the landmarks were predicted on; the score
    is the visibility clipped to [0, 1]. Coordinates outside the image are kept as predicted
    (MediaPipe extrapolates out-of-frame joints, with a low visibility).
    """
    arr = np.asarray(landmarks, dtype=np.float32)
    if arr.shape != (NUM_MEDIAPIPE_LANDMARKS, 3):
        raise ValueError(
            f"MediaPipe landmarks have shape {arr.shape}, expected ({NUM_MEDIAPIPE_LANDMARKS}, 3)"
        )
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    picked = arr[list(MEDIAPIPE_TO_COCO)]
    out = np.empty((NUM_KEYPOINTS, 3), dtype=np.float32)
    out[:, 0] = picked[:, 0] * np.float32(width)
    out[:, 1] = picked[:, 1] * np.float32(height)
    out[:, 2] = np.clip(picked[:, 2], 0.0, 1.0)
    return out
