"""Import keypoints from a COCO-format JSON file (``images`` + ``annotations``).

Each annotation's ``keypoints`` is the COCO triplet list ``[x1, y1, v1, ..., x17, y17, v17]`` in
the COCO-17 order. The third value is read as ``third``:

- ``visibility`` (COCO's dataset format): 0 = not labelled -> score 0; 1 = labelled but occluded
  and 2 = visible -> score 1 (an occluded joint still marks where the body is, which is what
  the KPR masks need). Any other value is an error.
- ``score``: a detector confidence, clipped to [0, 1] (files written by pose estimators).

A crop normally shows one person; when an image has several annotations, the largest one
(``area``, else bbox area, else the extent of its labelled joints) is taken. Images without an
annotation are simply absent from the result.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ppa.pose.coco import KEYPOINT_NAMES, NUM_KEYPOINTS

logger = logging.getLogger(__name__)

THIRD_VALUE_MODES = ("visibility", "score")
_COCO_VISIBILITY_SCORE = {0: 0.0, 1: 1.0, 2: 1.0}


class CocoFormatError(ValueError):
    """A COCO JSON file is malformed; the message names the file and the offending entry."""


@dataclass
class CocoKeypoints:
    """Keypoints read from a COCO JSON file, keyed by the image's relative POSIX path."""

    path: Path
    keypoints: dict[str, np.ndarray] = field(default_factory=dict)
    # (height, width) where the file states them, to catch keypoints of another resolution.
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)


def normalise_key(file_name: str, source: Path) -> str:
    """COCO ``file_name`` -> cache key: relative POSIX path, no ``./``, no ``..``."""
    name = str(file_name).replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts:
        raise CocoFormatError(
            f"{source}: image file_name {file_name!r} must be a path relative to the dataset root"
        )
    return pure.as_posix()


def _area(ann: dict[str, Any], joints: np.ndarray) -> float:
    if "area" in ann:
        return float(ann["area"])
    bbox = ann.get("bbox")
    if bbox is not None and len(bbox) == 4:
        return float(bbox[2]) * float(bbox[3])
    labelled = joints[joints[:, 2] > 0]
    if len(labelled) == 0:
        return 0.0
    extent = labelled[:, :2].max(axis=0) - labelled[:, :2].min(axis=0)
    return float(extent[0] * extent[1])


def _joints(ann: dict[str, Any], third: str, source: Path) -> np.ndarray:
    ann_id = ann.get("id", "?")
    values = ann.get("keypoints")
    if not isinstance(values, list) or len(values) != NUM_KEYPOINTS * 3:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise CocoFormatError(
            f"{source}: annotation {ann_id} has keypoints of length {got}, expected "
            f"{NUM_KEYPOINTS * 3} (COCO-17 x, y, v triplets)"
        )
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(NUM_KEYPOINTS, 3)
    except (TypeError, ValueError) as err:
        raise CocoFormatError(f"{source}: annotation {ann_id} has non-numeric keypoints") from err
    if not np.isfinite(arr).all():
        raise CocoFormatError(f"{source}: annotation {ann_id} has non-finite keypoints")
    out = arr.astype(np.float32)
    if third == "visibility":
        flags = arr[:, 2]
        bad = [float(v) for v in flags if v not in _COCO_VISIBILITY_SCORE]
        if bad:
            raise CocoFormatError(
                f"{source}: annotation {ann_id} has visibility values {sorted(set(bad))}, COCO "
                "uses 0/1/2; for confidences set pose_backend.coco_third=score"
            )
        out[:, 2] = [_COCO_VISIBILITY_SCORE[int(v)] for v in flags]
    else:
        out[:, 2] = np.clip(out[:, 2], 0.0, 1.0)
    return out


def _check_categories(data: dict[str, Any], source: Path) -> None:
    for category in data.get("categories", []) or []:
        names = category.get("keypoints")
        if names is not None and tuple(names) != KEYPOINT_NAMES:
            raise CocoFormatError(
                f"{source}: category {category.get('id', '?')} declares keypoints {names}, "
                f"expected the COCO-17 order {list(KEYPOINT_NAMES)}"
            )


def load_coco_keypoints(path: str | os.PathLike, third: str = "visibility") -> CocoKeypoints:
    """Read a COCO-format keypoint JSON (see the module docstring)."""
    source = Path(path)
    if third not in THIRD_VALUE_MODES:
        raise ValueError(f"third={third!r}: expected one of {THIRD_VALUE_MODES}")
    if not source.is_file():
        raise FileNotFoundError(f"COCO keypoint file not found: {source}")
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CocoFormatError(f"{source}: not readable as JSON: {err}") from err
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise CocoFormatError(
            f"{source}: expected a COCO dataset-format object with 'images' and 'annotations' lists"
        )
    _check_categories(data, source)

    result = CocoKeypoints(path=source)
    id_to_key: dict[Any, str] = {}
    for image in data["images"]:
        if "id" not in image or "file_name" not in image:
            raise CocoFormatError(f"{source}: image entry {image!r} lacks 'id' or 'file_name'")
        key = normalise_key(image["file_name"], source)
        if key in id_to_key.values():
            raise CocoFormatError(f"{source}: image {key!r} is listed twice")
        if image["id"] in id_to_key:
            raise CocoFormatError(f"{source}: image id {image['id']!r} is used twice")
        id_to_key[image["id"]] = key
        if "height" in image and "width" in image:
            result.sizes[key] = (int(image["height"]), int(image["width"]))

    best_area: dict[str, float] = {}
    for ann in data["annotations"]:
        if "keypoints" not in ann:
            continue  # a non-person annotation (e.g. a box-only category)
        image_id = ann.get("image_id")
        if image_id not in id_to_key:
            raise CocoFormatError(
                f"{source}: annotation {ann.get('id', '?')} refers to unknown image_id {image_id!r}"
            )
        key = id_to_key[image_id]
        joints = _joints(ann, third, source)
        area = _area(ann, joints)
        if key in best_area:
            logger.debug("%s: %s has several annotations; keeping the largest", source, key)
            if area <= best_area[key]:
                continue
        best_area[key] = area
        result.keypoints[key] = joints
    return result
