"""The ``file`` backend: keypoints that already exist (synthetic ground truth, a cache written
elsewhere, or a COCO-format JSON), served through the same interface as the estimators."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from ppa.data.keypoints import KeypointCache, MissingKeypointsError
from ppa.keypoint_extraction.base import PoseBackend, PoseBackendError
from ppa.keypoint_extraction.coco_json import load_coco_keypoints
from ppa.pose.coco import NUM_KEYPOINTS

logger = logging.getLogger(__name__)

FORMATS = ("auto", "npz", "coco_json")
ON_MISSING = ("error", "skip")


def detect_format(path: Path, fmt: str) -> str:
    """Resolve ``auto`` by suffix: ``.npz`` -> npz cache, ``.json`` -> COCO JSON."""
    if fmt not in FORMATS:
        raise ValueError(f"pose_backend.format={fmt!r}: expected one of {FORMATS}")
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".json":
        return "coco_json"
    raise ValueError(
        f"cannot tell the format of {path} from its suffix; set pose_backend.format=npz|coco_json"
    )


class FileBackend(PoseBackend):
    """Look keypoints up by image key; pixels are only used to check the stated image size."""

    name: ClassVar[str] = "file"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fmt: str = "auto",
        on_missing: str = "error",
        coco_third: str = "visibility",
    ):
        self.path = Path(path)
        if on_missing not in ON_MISSING:
            raise ValueError(
                f"pose_backend.on_missing={on_missing!r}: expected one of {ON_MISSING}"
            )
        self.on_missing = on_missing
        self.format = detect_format(self.path, fmt)
        self._sizes: dict[str, tuple[int, int]] = {}
        if self.format == "npz":
            cache = KeypointCache.load(self.path)
            self._entries = {key: cache[key] for key in cache}
            # Keep the original tag: a copy of a cache is still that source's keypoints.
            self._source = cache.source
        else:
            coco = load_coco_keypoints(self.path, third=coco_third)
            self._entries = coco.keypoints
            self._sizes = coco.sizes
            self._source = f"coco-json:{self.path.name}"
        logger.info(
            "file backend: %d entries from %s (%s)", len(self._entries), self.path, self.format
        )

    @property
    def source(self) -> str:
        return self._source

    def __len__(self) -> int:
        return len(self._entries)

    def _predict(self, images: Sequence[np.ndarray], keys: Sequence[str] | None) -> np.ndarray:
        if keys is None:
            raise ValueError("the file backend looks keypoints up by image key: pass keys")
        out = np.full((len(keys), NUM_KEYPOINTS, 3), np.nan, dtype=np.float32)
        for i, (image, key) in enumerate(zip(images, keys, strict=True)):
            if key not in self._entries:
                if self.on_missing == "error":
                    raise MissingKeypointsError(self.path, key)
                continue
            stated = self._sizes.get(key)
            if stated is not None and stated != tuple(image.shape[:2]):
                raise PoseBackendError(
                    f"{self.path} states {key!r} is {stated[0]}x{stated[1]} (HxW) but the image "
                    f"is {image.shape[0]}x{image.shape[1]}: keypoints of another resolution"
                )
            out[i] = self._entries[key]
        return out
