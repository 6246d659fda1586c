"""Keypoint backends behind one interface: person crops in, COCO-17 ``(N, 17, 3)`` out.

- ``mmpose``: RTMPose top-down, the default for real sites (needs a trained checkpoint).
- ``mediapipe``: MediaPipe Pose with the weights bundled in its wheel (offline fallback).
- ``file``: an existing cache (``.npz``) or a COCO-format JSON.

The pose libraries are imported lazily inside their backend, so ``ppa`` stays importable in the
training environment, which only reads the keypoint cache (``ppa.data.keypoints``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ppa.keypoint_extraction.base import (
    PoseBackend,
    PoseBackendError,
    PoseBackendUnavailableError,
    check_images,
)

BACKEND_NAMES: tuple[str, ...] = ("mmpose", "mediapipe", "file")

# Keys of configs/pose_extraction.yaml: read by scripts/extract_keypoints.py, not backends.
EXTRACTION_KEYS = frozenset(
    {
        "name",
        "batch_size",
        "device",
        "checkpoint_every",
        "resume",
        "min_confidence",
        "min_joints",
    }
)
_BACKEND_KEYS: dict[str, frozenset[str]] = {
    "mmpose": frozenset(
        {
            "config",
            "checkpoint",
            "checkpoint_dir",
            "checkpoint_sha256",
            "flip_test",
            "bbox",
            "trust_checkpoint",
            "allow_random_weights",
        }
    ),
    "mediapipe": frozenset({"model_complexity", "min_detection_confidence"}),
    "file": frozenset({"path", "format", "on_missing", "coco_third"}),
}


def create_backend(cfg: Mapping[str, Any]) -> PoseBackend:
    """Build the backend a ``pose_backend`` config (configs/pose_backend/*.yaml) describes."""
    name = cfg.get("name")
    if name not in BACKEND_NAMES:
        raise ValueError(f"pose_backend.name={name!r}: expected one of {BACKEND_NAMES}")
    unknown = set(cfg) - EXTRACTION_KEYS - _BACKEND_KEYS[name]
    if unknown:
        raise ValueError(
            f"pose_backend ({name}) has unknown keys {sorted(unknown)}; known: "
            f"{sorted(_BACKEND_KEYS[name])} + {sorted(EXTRACTION_KEYS)}"
        )
    device = str(cfg.get("device", "auto"))
    if name == "mmpose":
        from ppa.keypoint_extraction.mmpose_backend import MMPoseBackend

        return MMPoseBackend(
            config=str(cfg["config"]),
            checkpoint=cfg.get("checkpoint"),
            checkpoint_dir=str(cfg.get("checkpoint_dir", "data/pose-models")),
            checkpoint_sha256=cfg.get("checkpoint_sha256"),
            device=device,
            flip_test=bool(cfg.get("flip_test", True)),
            bbox=str(cfg.get("bbox", "whole_crop")),
            trust_checkpoint=bool(cfg.get("trust_checkpoint", False)),
            allow_random_weights=bool(cfg.get("allow_random_weights", False)),
        )
    if name == "mediapipe":
        from ppa.keypoint_extraction.mediapipe_backend import MediaPipeBackend

        return MediaPipeBackend(
            model_complexity=int(cfg.get("model_complexity", 1)),
            min_detection_confidence=float(cfg.get("min_detection_confidence", 0.5)),
            device=device,
        )
    from ppa.keypoint_extraction.file_backend import FileBackend

    path = cfg.get("path")
    if not path:
        raise ValueError("pose_backend.path is required for the file backend (.npz or .json)")
    from ppa.config import resolve_path

    return FileBackend(
        resolve_path(str(path)),
        fmt=str(cfg.get("format", "auto")),
        on_missing=str(cfg.get("on_missing", "error")),
        coco_third=str(cfg.get("coco_third", "visibility")),
    )


__all__ = [
    "BACKEND_NAMES",
    "PoseBackend",
    "PoseBackendError",
    "PoseBackendUnavailableError",
    "check_images",
    "create_backend",
]
