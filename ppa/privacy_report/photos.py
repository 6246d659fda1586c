"""Real photos for the privacy report: packaged portraits with hand-placed joints, or a folder
with its keypoint cache (else the canonical body prior)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from matplotlib import cbook
from skimage import data as skimage_data
from torch import Tensor

from ppa.data.errors import CorruptImageError
from ppa.data.images import read_image
from ppa.data.keypoints import KeypointCache
from ppa.data.transforms import ReidTransform
from ppa.pose.coco import INDEX, NUM_KEYPOINTS
from ppa.pose.prior import canonical_keypoints

logger = logging.getLogger(__name__)

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
HAND_PLACED_SCORE = 0.9
THUMBNAIL = 160  # pixels, the side of a photo cell in photos.png
# Head and shoulder joints placed by hand on the packaged portraits (x, y in their pixels;
# COCO left = the person's left, i.e. the image's right for a frontal photo).
SAMPLE_PHOTO_JOINTS: dict[str, dict[str, tuple[float, float]]] = {
    "astronaut": {
        "nose": (224, 128),
        "left_eye": (243, 104),
        "right_eye": (205, 106),
        "left_ear": (265, 112),
        "right_ear": (180, 115),
        "left_shoulder": (330, 290),
        "right_shoulder": (90, 300),
    },
    "grace_hopper": {
        "nose": (255, 245),
        "left_eye": (295, 200),
        "right_eye": (215, 200),
        "left_ear": (345, 225),
        "right_ear": (165, 230),
        "left_shoulder": (440, 410),
        "right_shoulder": (90, 420),
    },
}


@dataclass
class Photo:
    """A real photo at measuring resolution, with its keypoints."""

    name: str
    source: str
    keypoints_from: str  # cache | prior | hand-placed
    image: Tensor  # (1, 3, H, W) in [0, 1]
    keypoints: Tensor  # (1, 17, 3) in its pixels


def _photo(
    name: str,
    source: str,
    keypoints_from: str,
    image: np.ndarray,
    points: np.ndarray,
    max_height: int,
) -> Photo:
    height, width = image.shape[:2]
    if height > max_height:  # aspect kept; keypoints follow the resize
        height, width = max_height, max(1, round(width * max_height / height))
    tensor, kp = ReidTransform(height, width)(image, points)
    return Photo(name, source, keypoints_from, tensor[None], kp[None])


def _hand_placed(joints: dict[str, tuple[float, float]]) -> np.ndarray:
    points = np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
    for joint, (x, y) in joints.items():
        points[INDEX[joint]] = (x, y, HAND_PLACED_SCORE)
    return points


def sample_photos(max_height: int) -> list[Photo]:
    """The portraits shipped with scikit-image and matplotlib (no download needed)."""
    hopper = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return [
        _photo(
            "astronaut",
            "skimage.data.astronaut()",
            "hand-placed",
            np.ascontiguousarray(skimage_data.astronaut()),
            _hand_placed(SAMPLE_PHOTO_JOINTS["astronaut"]),
            max_height,
        ),
        _photo(
            "grace_hopper",
            f"matplotlib sample data {hopper.name}",
            "hand-placed",
            read_image(hopper),
            _hand_placed(SAMPLE_PHOTO_JOINTS["grace_hopper"]),
            max_height,
        ),
    ]


def folder_photos(folder: Path, cache_name: str, max_height: int, on_bad_image: str) -> list[Photo]:
    """Every image under `folder`, keypoints from `<folder>/<cache_name>` or the prior."""
    if not folder.is_dir():
        raise FileNotFoundError(f"privacy_report.photos={folder} is not a folder")
    paths = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES
    )
    if not paths:
        raise ValueError(f"privacy_report.photos={folder} holds no {sorted(PHOTO_SUFFIXES)} images")
    cache_file = folder / cache_name
    cache = KeypointCache.load(cache_file) if cache_file.is_file() else None
    photos, prior = [], []
    for path in paths:
        name = path.relative_to(folder).as_posix()
        try:
            image = read_image(path)
        except CorruptImageError as err:
            if on_bad_image != "skip":
                raise
            logger.warning("on_bad_image=skip: dropping photo %s", err)
            continue
        points = cache.get(name) if cache is not None else None
        if points is None or not (points[:, 2] > 0).any():
            prior.append(name)
            points, origin = canonical_keypoints(*image.shape[:2]), "prior"
        else:
            origin = "cache"
        photos.append(_photo(name, str(path), origin, image, points, max_height))
    if prior:
        logger.warning(
            "%d of %d photos in %s have no keypoints in %s: using the canonical "
            "body prior (ppa.pose.prior) for %s",
            len(prior),
            len(paths),
            folder,
            cache_file if cache is not None else "(no cache)",
            ", ".join(prior[:5]),
        )
    return photos


def thumbnail(image: Tensor, size: int = THUMBNAIL) -> Tensor:
    """(1, 3, H, W) -> (1, 3, size, size): fitted, aspect kept, padded white."""
    height, width = image.shape[-2:]
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    small = F.interpolate(image, size=(h, w), mode="area")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(small, (left, size - w - left, top, size - h - top), value=1.0)
