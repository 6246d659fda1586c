"""RegDB reader: training set of one trial and its visible<->thermal test splits.

Layout: ``Visible/`` and ``Thermal/`` image folders and
``idx/{train,test}_{visible,thermal}_{t}.txt`` for trials t = 1..10, each line
``<path relative to the root> <label>``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from ppa.data.errors import DatasetLayoutError
from ppa.data.records import ImageRecord, Modality, TrainRecord
from ppa.data.splits import TestSplit, TrainSet

logger = logging.getLogger(__name__)

INDEX_DIR = "idx"
# SYSU-MM01's split folder: its presence (and no idx/) marks a SYSU root given as RegDB.
_SYSU_SPLIT_DIR = "exp"
VISIBLE_CAMERA = 1
THERMAL_CAMERA = 2
CAMERA_OF: dict[Modality, int] = {
    Modality.VISIBLE: VISIBLE_CAMERA,
    Modality.INFRARED: THERMAL_CAMERA,
}
# RegDB calls its infrared modality "thermal", in file names and directions.
FILE_TAG: dict[Modality, str] = {Modality.VISIBLE: "visible", Modality.INFRARED: "thermal"}
DIRECTIONS: dict[str, tuple[Modality, Modality]] = {
    "visible_to_thermal": (Modality.VISIBLE, Modality.INFRARED),
    "thermal_to_visible": (Modality.INFRARED, Modality.VISIBLE),
}


class IndexEntry(NamedTuple):
    """One line of an index file."""

    path: str  # relative to the dataset root, POSIX separators
    label: int  # the dataset's own identity label
    line: int  # 1-based line number, for error messages


def camera_modality(cam: int) -> Modality:
    """Modality of a RegDB camera id (1 visible, 2 thermal)."""
    for modality, camera in CAMERA_OF.items():
        if camera == cam:
            return modality
    raise ValueError(f"RegDB has cameras 1 (visible) and 2 (thermal), got camera {cam!r}")


def index_file(root: str | os.PathLike, part: str, modality: Modality, trial: int) -> Path:
    """Path of ``idx/{part}_{visible|thermal}_{trial}.txt`` (part: train or test)."""
    if part not in ("train", "test"):
        raise ValueError(f"RegDB index part must be 'train' or 'test', got {part!r}")
    return Path(root) / INDEX_DIR / f"{part}_{FILE_TAG[modality]}_{trial}.txt"


def read_index_file(path: str | os.PathLike) -> list[IndexEntry]:
    """Parse an index file into entries (relative POSIX path, label, line), in file order.

    Blank lines are skipped; anything else that is not ``<relative path> <label>`` raises
    DatasetLayoutError naming the file and the line number.
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "is missing"
        raise DatasetLayoutError(path, f"index file {what}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetLayoutError(path, f"cannot read index file: {err}") from err
    entries: list[IndexEntry] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        # The label is the last field; splitting from the right tolerates spaces in paths.
        fields = line.strip().rsplit(maxsplit=1)
        if len(fields) != 2:
            raise DatasetLayoutError(
                path, f"line {number}: expected '<relative path> <label>', got {line!r}"
            )
        relative, label_text = fields
        try:
            label = int(label_text)
        except ValueError:
            raise DatasetLayoutError(
                path, f"line {number}: label {label_text!r} is not an integer"
            ) from None
        if label < 0:
            raise DatasetLayoutError(path, f"line {number}: negative label {label}")
        relative = relative.replace("\\", "/")
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts:
            raise DatasetLayoutError(
                path,
                f"line {number}: image path {relative!r} must be relative to the "
                "dataset root and stay inside it",
            )
        entries.append(IndexEntry(str(pure), label, number))
    if not entries:
        raise DatasetLayoutError(path, "index file lists no images")
    return entries


def load_train_set(
    root: str | os.PathLike,
    trial: int = 1,
    modalities: Sequence[Modality | str] | None = None,
    require_all_files: bool = True,
) -> TrainSet:
    """Read the training images of one trial (visible file order, then thermal).

    Labels are the original labels relabelled to 0..N-1 in sorted order, taken from both train
    index files of the trial whichever modalities are read, so a site holding only one
    modality's images agrees on the label space. `modalities` restricts which images are read;
    ``require_all_files=False`` skips listed files that are absent instead of raising.
    """
    root = _check_root(root)
    _check_trial(trial)
    wanted = (
        tuple(Modality)
        if modalities is None
        else tuple(m for m in Modality if m in {Modality.parse(v) for v in modalities})
    )
    if not wanted:
        raise ValueError("RegDB load_train_set needs at least one modality")
    listed = {m: read_index_file(index_file(root, "train", m, trial)) for m in Modality}
    pid_to_label = _label_space(listed)
    pids = sorted(pid_to_label)

    records: list[TrainRecord] = []
    for modality in wanted:
        source = index_file(root, "train", modality, trial)
        for entry in _existing(root, source, listed[modality], require_all_files):
            records.append(
                TrainRecord(
                    entry.path,
                    entry.label,
                    CAMERA_OF[modality],
                    modality,
                    pid_to_label[entry.label],
                )
            )
    if not records:
        raise DatasetLayoutError(
            root,
            f"no training images of trial {trial} found for "
            f"{', '.join(FILE_TAG[m] for m in wanted)}",
        )
    logger.info(
        "RegDB %s trial %d: %d training images, %d ids", root, trial, len(records), len(pids)
    )
    return TrainSet(root=root, records=records, num_classes=len(pids), pid_to_label=pid_to_label)


def read_label_space(root: str | os.PathLike, trial: int = 1) -> dict[int, int]:
    """Original label -> training label of a trial, from its two train index files alone.

    The same mapping `load_train_set` uses; no image is read.
    """
    root = _check_root(root)
    _check_trial(trial)
    return _label_space({m: read_index_file(index_file(root, "train", m, trial)) for m in Modality})


def _label_space(listed: dict[Modality, list[IndexEntry]]) -> dict[int, int]:
    pids = sorted({entry.label for entries in listed.values() for entry in entries})
    return {pid: label for label, pid in enumerate(pids)}


def load_test_split(
    root: str | os.PathLike, trial: int = 1, direction: str = "visible_to_thermal"
) -> TestSplit:
    """Test split of a trial: query = test images of the first modality, gallery = the other."""
    if direction not in DIRECTIONS:
        raise ValueError(f"RegDB direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
    root = _check_root(root)
    _check_trial(trial)
    query_modality, gallery_modality = DIRECTIONS[direction]

    def records(modality: Modality) -> list[ImageRecord]:
        source = index_file(root, "test", modality, trial)
        entries = _existing(root, source, read_index_file(source), require_all=True)
        return [
            ImageRecord(entry.path, entry.label, CAMERA_OF[modality], modality) for entry in entries
        ]

    return TestSplit(root=root, query=records(query_modality), gallery=records(gallery_modality))


def _existing(
    root: Path, source: Path, entries: list[IndexEntry], require_all: bool
) -> list[IndexEntry]:
    """Entries whose image file exists; a missing one raises unless `require_all` is False."""
    kept = []
    for entry in entries:
        if (root / entry.path).is_file():
            kept.append(entry)
        elif require_all:
            raise DatasetLayoutError(
                root / entry.path, f"image listed in {source} (line {entry.line}) is missing"
            )
    if len(kept) < len(entries):
        logger.info(
            "%s: %d of %d listed images are absent under %s (skipped)",
            source,
            len(entries) - len(kept),
            len(entries),
            root,
        )
    return kept


def _check_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DatasetLayoutError(root, f"RegDB root {what}")
    if not (root / INDEX_DIR).is_dir() and (root / _SYSU_SPLIT_DIR).is_dir():
        # A SYSU-MM01 root under a RegDB config: say so instead of naming a missing index file.
        raise DatasetLayoutError(
            root,
            f"not a RegDB root: no {INDEX_DIR}/ index folder but an {_SYSU_SPLIT_DIR}/ folder, "
            "as in SYSU-MM01; use dataset=sysu (or synthetic_sysu) for this root",
        )
    return root


def _check_trial(trial: int) -> None:
    if isinstance(trial, bool) or not isinstance(trial, int) or trial < 1:
        raise ValueError(f"RegDB trial must be a positive integer (1..10), got {trial!r}")
