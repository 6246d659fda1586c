"""The records every reader, partitioner and loader exchanges."""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class Modality(str, Enum):
    """Sensor modality of a camera / site."""

    VISIBLE = "visible"
    INFRARED = "infrared"

    @property
    def index(self) -> int:
        """Stable integer id (0 visible, 1 infrared), used for stems and offsets."""
        return MODALITIES.index(self)

    @classmethod
    def parse(cls, value: str | Modality) -> Modality:
        """Parse a modality name (also accepts ``rgb``, ``ir``, ``thermal``)."""
        if isinstance(value, Modality):
            return value
        aliases = {
            "visible": cls.VISIBLE,
            "rgb": cls.VISIBLE,
            "infrared": cls.INFRARED,
            "ir": cls.INFRARED,
            "thermal": cls.INFRARED,
        }
        key = str(value).strip().lower()
        if key not in aliases:
            raise ValueError(
                f"unknown modality {value!r}: expected one of visible, infrared "
                "(aliases rgb, ir, thermal)"
            )
        return aliases[key]


MODALITIES: tuple[Modality, ...] = (Modality.VISIBLE, Modality.INFRARED)


class ImageRecord(NamedTuple):
    """One image of a dataset.

    `path` is relative to the dataset root, POSIX separators (it is also the key into the
    keypoint cache); `pid` is the dataset's own identity id; `cam` the camera id
    (SYSU: 1..6; RegDB: 1 visible, 2 thermal).
    """

    path: str
    pid: int
    cam: int
    modality: Modality


class TrainRecord(NamedTuple):
    """A training image: an ImageRecord plus its identity label in 0..num_classes-1."""

    path: str
    pid: int
    cam: int
    modality: Modality
    label: int
