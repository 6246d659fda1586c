"""What the dataset readers return: a training set and one test split (query + gallery)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ppa.data.records import ImageRecord, Modality, TrainRecord


@dataclass
class TrainSet:
    """Training images of one dataset root.

    `num_classes` and `pid_to_label` come from the dataset's split files, not from the images
    found, so every site reading a partial copy of the root agrees on the label space.
    """

    root: Path
    records: list[TrainRecord]
    num_classes: int
    pid_to_label: dict[int, int]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def modalities(self) -> tuple[Modality, ...]:
        """Modalities present in the records, in Modality order."""
        present = {record.modality for record in self.records}
        return tuple(m for m in Modality if m in present)


@dataclass
class TestSplit:
    """One test split; unpacks as ``query, gallery = split``."""

    __test__ = False  # not a pytest test class despite its name

    root: Path
    query: list[ImageRecord]
    gallery: list[ImageRecord]

    def __iter__(self) -> Iterator[list[ImageRecord]]:
        yield self.query
        yield self.gallery
