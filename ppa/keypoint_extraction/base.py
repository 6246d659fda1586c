"""The interface every keypoint backend implements: person crops in, COCO-17 keypoints out."""

from __future__ import annotations

import abc
import logging
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import ClassVar

import numpy as np

from ppa.pose.coco import NUM_KEYPOINTS

logger = logging.getLogger(__name__)

POSE_SETUP_HINT = (
    "the pose libraries live in their own environment (they need protobuf<5, Flower needs "
    ">=5.28): run `make pose-setup` and use .venv-pose/bin/python"
)


class PoseBackendError(RuntimeError):
    """A backend cannot be built or cannot process its input."""


class PoseBackendUnavailableError(ImportError):
    """The library a backend needs is not installed in the running interpreter."""

    def __init__(self, backend: str, module: str, cause: BaseException | None = None):
        self.backend = backend
        self.module = module
        detail = f" ({cause})" if cause else ""
        super().__init__(
            f"pose backend {backend!r} needs `{module}`, which {sys.executable} cannot import"
            f"{detail}; {POSE_SETUP_HINT}"
        )


def check_images(images: Sequence[np.ndarray]) -> None:
    """Validate a batch of person crops: each a (H, W, 3) uint8 array (IR as 3 equal channels)."""
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray):
            raise TypeError(f"image {i} of the batch is a {type(image).__name__}, not an ndarray")
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"image {i} of the batch has shape {image.shape} and dtype {image.dtype}; "
                "expected (H, W, 3) uint8 RGB (convert IR/grey crops to 3 channels)"
            )
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"image {i} of the batch is empty: shape {image.shape}")


def resolve_device(device: str) -> str:
    """Map the configured device (``auto``, ``cpu``, ``cuda``, ``cuda:N``) to a torch device."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"pose_backend.device={device!r}: expected auto, cpu, cuda or cuda:N")
    if device == "cpu":
        return device
    import torch  # only the torch-based backends call this

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise PoseBackendError(f"pose_backend.device={device!r} but torch sees no CUDA device")
    return device


class PoseBackend(abc.ABC):
    """Batched keypoint estimation on person crops.

    ``predict(images, keys)`` takes a batch of (H, W, 3) uint8 RGB crops (the whole crop is the
    person box) and returns float32 ``(N, 17, 3)``: x, y in pixels of each crop, score in [0, 1].
    A crop with no person found has score 0 on every joint. A row of NaN means the backend has
    no answer for that image (only the ``file`` backend, for keys its source lacks, and only when
    told to skip them); callers must not store such rows.
    ``keys`` are the images' paths relative to the dataset root (the cache keys); backends that
    look at pixels ignore them.
    """

    name: ClassVar[str]

    @property
    @abc.abstractmethod
    def source(self) -> str:
        """Tag written into the keypoint cache's ``source`` field (backend, model, weights)."""

    @abc.abstractmethod
    def _predict(self, images: Sequence[np.ndarray], keys: Sequence[str] | None) -> np.ndarray:
        """Backend-specific prediction on a validated, non-empty batch."""

    def predict(
        self, images: Sequence[np.ndarray], keys: Sequence[str] | None = None
    ) -> np.ndarray:
        """Keypoints (N, 17, 3) float32 for a batch of N crops (see the class docstring)."""
        if keys is not None and len(keys) != len(images):
            raise ValueError(f"{len(images)} images but {len(keys)} keys in one batch")
        if len(images) == 0:
            return np.zeros((0, NUM_KEYPOINTS, 3), dtype=np.float32)
        check_images(images)
        out = np.asarray(self._predict(images, keys), dtype=np.float32)
        if out.shape != (len(images), NUM_KEYPOINTS, 3):
            raise PoseBackendError(
                f"backend {self.name!r} returned shape {out.shape} for {len(images)} images, "
                f"expected ({len(images)}, {NUM_KEYPOINTS}, 3)"
            )
        return out

    def close(self) -> None:  # noqa: B027 - optional hook; most backends hold nothing to free
        """Release the model (graphs, GPU memory). Safe to call twice."""

    def __enter__(self) -> PoseBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
