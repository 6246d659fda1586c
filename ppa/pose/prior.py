"""A canonical standing-person keypoint prior, scaled to a crop (pose.missing=center_prior)."""

from __future__ import annotations

import numpy as np

# (x, y) as fractions of the crop width/height for an upright, centred person seen from the
# front, the usual look of a pedestrian detection crop.
_CANONICAL_XY = np.array(
    [
        (0.50, 0.10),  # nose
        (0.53, 0.08),
        (0.47, 0.08),  # eyes
        (0.57, 0.09),
        (0.43, 0.09),  # ears
        (0.66, 0.21),
        (0.34, 0.21),  # shoulders
        (0.72, 0.38),
        (0.28, 0.38),  # elbows
        (0.74, 0.53),
        (0.26, 0.53),  # wrists
        (0.61, 0.53),
        (0.39, 0.53),  # hips
        (0.60, 0.72),
        (0.40, 0.72),  # knees
        (0.60, 0.92),
        (0.40, 0.92),  # ankles
    ],
    dtype=np.float32,
)

PRIOR_SCORE = 0.5


def canonical_keypoints(height: int, width: int, score: float = PRIOR_SCORE) -> np.ndarray:
    """COCO-17 keypoints (17, 3) of the canonical body prior in pixels of a (height, width) crop.

    The score marks them as a prior: confident enough to build masks, but below what a real
    detector reports for a clearly visible joint.
    """
    out = np.empty((len(_CANONICAL_XY), 3), dtype=np.float32)
    out[:, 0] = _CANONICAL_XY[:, 0] * width
    out[:, 1] = _CANONICAL_XY[:, 1] * height
    out[:, 2] = score
    return out
