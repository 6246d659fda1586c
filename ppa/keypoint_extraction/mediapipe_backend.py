"""The ``mediapipe`` backend: MediaPipe Pose with the model bundled in the wheel (works offline).

The fallback when no RTMPose checkpoint is available. ``mediapipe==0.10.14`` ships
``pose_landmark_full.tflite`` (model_complexity=1) and the person detector inside the wheel;
the lite (0) and heavy (2) landmark models are downloaded on first use, which needs internet.
MediaPipe's Python solution runs on the CPU only.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ppa.keypoint_extraction.base import PoseBackend, PoseBackendError, PoseBackendUnavailableError
from ppa.keypoint_extraction.mediapipe_map import NUM_MEDIAPIPE_LANDMARKS, landmarks_to_coco
from ppa.pose.coco import NUM_KEYPOINTS

logger = logging.getLogger(__name__)

LANDMARK_MODEL_FILES = {
    0: "pose_landmark_lite.tflite",
    1: "pose_landmark_full.tflite",
    2: "pose_landmark_heavy.tflite",
}


class MediaPipeBackend(PoseBackend):
    """MediaPipe Pose (BlazePose) on each crop independently, 33 landmarks -> COCO-17."""

    name: ClassVar[str] = "mediapipe"

    def __init__(
        self,
        *,
        model_complexity: int = 1,
        min_detection_confidence: float = 0.5,
        device: str = "auto",
    ):
        if model_complexity not in LANDMARK_MODEL_FILES:
            raise ValueError(
                f"pose_backend.model_complexity={model_complexity!r}: expected 0, 1 or 2"
            )
        if not 0.0 <= min_detection_confidence <= 1.0:
            raise ValueError(
                f"pose_backend.min_detection_confidence={min_detection_confidence}: expected [0, 1]"
            )
        if device not in ("auto", "cpu"):
            raise ValueError(
                f"pose_backend.device={device!r}: MediaPipe's Python solution runs on the CPU "
                "only; use auto or cpu"
            )
        # protobuf 4 deprecation notice raised from inside mediapipe on every image.
        warnings.filterwarnings(
            "ignore", message=r"SymbolDatabase\.GetPrototype", category=UserWarning
        )
        try:
            import mediapipe as mp
        except ImportError as err:
            raise PoseBackendUnavailableError(self.name, "mediapipe", err) from err
        self.version = getattr(mp, "__version__", "unknown")
        self.model_complexity = model_complexity
        model_file = (
            Path(mp.__file__).parent
            / "modules"
            / "pose_landmark"
            / LANDMARK_MODEL_FILES[model_complexity]
        )
        if not model_file.is_file():
            logger.warning(
                "%s is not bundled with mediapipe %s: MediaPipe downloads it now "
                "(needs internet; model_complexity=1 is the bundled one)",
                model_file.name,
                self.version,
            )
        try:
            # static_image_mode: every crop is a new image; tracking across crops would carry
            # one person's pose into the next person's crop.
            self._pose: Any = mp.solutions.pose.Pose(
                static_image_mode=True,
                model_complexity=model_complexity,
                enable_segmentation=False,
                min_detection_confidence=min_detection_confidence,
            )
        except OSError as err:  # urllib's URLError is an OSError: the download failed
            raise PoseBackendError(
                f"MediaPipe could not load {model_file.name}: {err}; use "
                "pose_backend.model_complexity=1 (bundled in the wheel)"
            ) from err

    @property
    def source(self) -> str:
        return f"mediapipe-{self.version}:{LANDMARK_MODEL_FILES[self.model_complexity]}"

    def _predict(self, images: Sequence[np.ndarray], keys: Sequence[str] | None) -> np.ndarray:
        if self._pose is None:
            raise PoseBackendError("the mediapipe backend was closed")
        out = np.zeros((len(images), NUM_KEYPOINTS, 3), dtype=np.float32)
        landmarks = np.empty((NUM_MEDIAPIPE_LANDMARKS, 3), dtype=np.float32)
        for i, image in enumerate(images):
            result = self._pose.process(np.ascontiguousarray(image))
            if result.pose_landmarks is None:
                continue  # no person: score 0 on every joint
            for j, lm in enumerate(result.pose_landmarks.landmark):
                landmarks[j] = (lm.x, lm.y, lm.visibility)
            out[i] = landmarks_to_coco(landmarks, image.shape[0], image.shape[1])
        return out

    def close(self) -> None:
        if self._pose is not None:
            self._pose.close()
            self._pose = None
