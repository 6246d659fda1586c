"""SYSU-MM01 reader: training set and the standard all/indoor search test splits.

Layout: ``cam{1..6}/{pid:04d}/{img:04d}.jpg`` plus ``exp/{train_id,val_id,test_id}.txt``, each
one line of comma-separated integer ids. The test gallery is drawn exactly as the literature's
reference evaluation code draws it (one `random` stream seeded with the trial number, walking
the sorted test ids and the visible cameras in order), so results are comparable with
published numbers.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from ppa.data.errors import DatasetLayoutError
from ppa.data.records import ImageRecord, Modality, TrainRecord
from ppa.data.splits import TestSplit, TrainSet

logger = logging.getLogger(__name__)

CAMERAS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
VISIBLE_CAMERAS: tuple[int, ...] = (1, 2, 4, 5)
INFRARED_CAMERAS: tuple[int, ...] = (3, 6)
INDOOR_VISIBLE_CAMERAS: tuple[int, ...] = (1, 2)
# Both search modes query with every infrared image; they differ only in the gallery cameras.
QUERY_CAMERAS: tuple[int, ...] = INFRARED_CAMERAS
GALLERY_CAMERAS: dict[str, tuple[int, ...]] = {
    "all": VISIBLE_CAMERAS,
    "indoor": INDOOR_VISIBLE_CAMERAS,
}
SHOTS: tuple[int, ...] = (1, 10)  # single-shot and multi-shot galleries

SPLIT_DIR = "exp"
TRAIN_ID_FILE = "train_id.txt"
VAL_ID_FILE = "val_id.txt"
TEST_ID_FILE = "test_id.txt"
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp"})

# RegDB's index folder: its presence (and no exp/) marks a RegDB root given as SYSU-MM01.
_REGDB_INDEX_DIR = "idx"
# How many offending ids an error message lists before eliding the rest.
_MAX_LISTED = 10


def camera_modality(cam: int) -> Modality:
    """Modality of a SYSU-MM01 camera (1, 2, 4, 5 visible; 3, 6 infrared)."""
    if cam in VISIBLE_CAMERAS:
        return Modality.VISIBLE
    if cam in INFRARED_CAMERAS:
        return Modality.INFRARED
    raise ValueError(f"SYSU-MM01 has cameras 1..6, got camera {cam!r}")


def camera_folder(cam: int) -> str:
    """Folder name of a camera inside the dataset root."""
    return f"cam{cam}"


def identity_folder(pid: int) -> str:
    """Folder name of an identity inside a camera folder (zero-padded to 4 digits)."""
    return f"{pid:04d}"


def read_id_file(path: str | os.PathLike) -> list[int]:
    """Read a split file: one line of comma-separated non-negative integer ids, no duplicates."""
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "is missing"
        raise DatasetLayoutError(path, f"split file {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetLayoutError(path, f"cannot read split file: {err}") from err
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DatasetLayoutError(path, "split file is empty (expected one line of ids)")
    if len(lines) > 1:
        raise DatasetLayoutError(
            path,
            f"split file has {len(lines)} non-empty lines, expected one line of "
            "comma-separated ids",
        )
    ids: list[int] = []
    for position, token in enumerate(lines[0].split(","), start=1):
        token = token.strip()
        try:
            pid = int(token)
        except ValueError:
            raise DatasetLayoutError(
                path, f"entry {position} is {token!r}, expected a non-negative integer id"
            ) from None
        if pid < 0:
            raise DatasetLayoutError(path, f"entry {position} is a negative id ({pid})")
        ids.append(pid)
    duplicates = sorted(pid for pid, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise DatasetLayoutError(path, f"ids listed more than once: {_elide(duplicates)}")
    return ids


def load_train_set(
    root: str | os.PathLike,
    cameras: Sequence[int] | None = None,
    require_all_ids: bool = True,
) -> TrainSet:
    """Read the training set (train + val ids) of a SYSU-MM01 root.

    Records are ordered by sorted id, then camera, then sorted file name. The label of an id is
    its index in ``sorted(train_ids + val_ids)``, whichever images are present, so sites that
    hold only some cameras agree on labels and `num_classes`.

    `cameras` restricts the camera folders read (a site's root may hold only its own); the
    folders of the cameras read must exist, the others may be absent. With
    ``require_all_ids=False`` a listed id without any folder in the cameras read is allowed.
    """
    root = _check_root(root)
    split_dir = root / SPLIT_DIR
    train_ids, val_ids = _train_and_val_ids(split_dir)
    pids = sorted(train_ids + val_ids)
    pid_to_label = {pid: label for label, pid in enumerate(pids)}
    cams = CAMERAS if cameras is None else _check_cameras(cameras)

    images = _scan(root, pids, cams)
    if require_all_ids:
        _check_all_present(root, split_dir / TRAIN_ID_FILE, train_ids, cams, images)
        _check_all_present(root, split_dir / VAL_ID_FILE, val_ids, cams, images)
    records = [
        TrainRecord(_relative(cam, pid, name), pid, cam, camera_modality(cam), pid_to_label[pid])
        for pid in pids
        for cam in cams
        for name in images.get((pid, cam), ())
    ]
    if not records:
        raise DatasetLayoutError(
            root,
            f"no training images of the {len(pids)} train/val ids in cameras "
            f"{', '.join(camera_folder(c) for c in cams)}",
        )
    logger.info(
        "SYSU-MM01 %s: %d training images, %d ids, cameras %s", root, len(records), len(pids), cams
    )
    return TrainSet(root=root, records=records, num_classes=len(pids), pid_to_label=pid_to_label)


def read_label_space(root: str | os.PathLike) -> dict[int, int]:
    """pid -> training label from the split files alone (no image is read).

    The same mapping `load_train_set` uses; enough for a party that holds no training images
    (the server) to size the classifier.
    """
    root = _check_root(root)
    train_ids, val_ids = _train_and_val_ids(root / SPLIT_DIR)
    return {pid: label for label, pid in enumerate(sorted(train_ids + val_ids))}


def load_test_split(
    root: str | os.PathLike, mode: str = "all", trial: int = 0, shots: int = 1
) -> TestSplit:
    """One test split: query = all infrared images of the test ids, gallery drawn for `trial`.

    Gallery: ``random.seed(trial)``, then for each sorted test id and each visible camera of the
    mode in order (all: 1, 2, 4, 5; indoor: 1, 2) where the id has a folder,
    ``random.choice`` of its sorted files (shots=1) or ``random.sample`` of min(10, n) files
    (shots=10), all from the one stream.
    """
    return load_test_splits(root, mode=mode, trials=(trial,), shots=shots)[0]


def load_test_splits(
    root: str | os.PathLike, mode: str = "all", trials: Iterable[int] = range(10), shots: int = 1
) -> list[TestSplit]:
    """`load_test_split` for several trials, scanning the folders once."""
    if mode not in GALLERY_CAMERAS:
        raise ValueError(
            f"SYSU-MM01 test mode must be one of {sorted(GALLERY_CAMERAS)}, got {mode!r}"
        )
    if shots not in SHOTS:
        raise ValueError(f"SYSU-MM01 gallery shots must be 1 or 10, got {shots!r}")
    trials = list(trials)
    for trial in trials:
        if isinstance(trial, bool) or not isinstance(trial, int) or trial < 0:
            raise ValueError(f"SYSU-MM01 trial must be a non-negative integer, got {trial!r}")
    root = _check_root(root)
    id_file = root / SPLIT_DIR / TEST_ID_FILE
    pids = sorted(read_id_file(id_file))
    gallery_cams = GALLERY_CAMERAS[mode]
    cams = tuple(sorted(set(QUERY_CAMERAS) | set(gallery_cams)))
    images = _scan(root, pids, cams)
    _check_all_present(root, id_file, pids, cams, images)

    query = [
        ImageRecord(_relative(cam, pid, name), pid, cam, Modality.INFRARED)
        for pid in pids
        for cam in QUERY_CAMERAS
        for name in images.get((pid, cam), ())
    ]
    splits = []
    for trial in trials:
        gallery = _draw_gallery(images, pids, gallery_cams, trial, shots)
        splits.append(TestSplit(root=root, query=list(query), gallery=gallery))
    return splits


def _draw_gallery(
    images: dict[tuple[int, int], list[str]],
    pids: list[int],
    gallery_cams: tuple[int, ...],
    trial: int,
    shots: int,
) -> list[ImageRecord]:
    # A private Random seeded like `random.seed(trial)` yields the same stream as the reference
    # code's global `random`, without touching global state.
    rng = random.Random(trial)
    gallery: list[ImageRecord] = []
    for pid in pids:
        for cam in gallery_cams:
            files = images.get((pid, cam))
            if files is None:
                continue
            if shots == 1:
                picked = [rng.choice(files)]
            else:
                picked = rng.sample(files, min(shots, len(files)))
            gallery.extend(
                ImageRecord(_relative(cam, pid, name), pid, cam, Modality.VISIBLE)
                for name in picked
            )
    return gallery


def _train_and_val_ids(split_dir: Path) -> tuple[list[int], list[int]]:
    train_ids = read_id_file(split_dir / TRAIN_ID_FILE)
    val_ids = read_id_file(split_dir / VAL_ID_FILE)
    overlap = sorted(set(train_ids) & set(val_ids))
    if overlap:
        raise DatasetLayoutError(
            split_dir, f"ids in both {TRAIN_ID_FILE} and {VAL_ID_FILE}: {_elide(overlap)}"
        )
    return train_ids, val_ids


def _check_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DatasetLayoutError(root, f"SYSU-MM01 root {what}")
    if not (root / SPLIT_DIR).is_dir() and (root / _REGDB_INDEX_DIR).is_dir():
        # The commonest mix-up: a RegDB root under a SYSU config. Say so instead of naming
        # the first missing split file.
        raise DatasetLayoutError(
            root,
            f"not a SYSU-MM01 root: no {SPLIT_DIR}/ split folder but an {_REGDB_INDEX_DIR}/ "
            "folder, as in RegDB; use dataset=regdb (or synthetic_regdb) for this root",
        )
    return root


def _check_cameras(cameras: Sequence[int]) -> tuple[int, ...]:
    cams = tuple(sorted(set(cameras)))
    unknown = [c for c in cams if c not in CAMERAS]
    if unknown or not cams:
        raise ValueError(f"SYSU-MM01 cameras must be a non-empty subset of 1..6, got {cameras!r}")
    return cams


def _scan(root: Path, pids: list[int], cams: tuple[int, ...]) -> dict[tuple[int, int], list[str]]:
    """(pid, cam) -> sorted image file names, for every identity folder that exists."""
    images: dict[tuple[int, int], list[str]] = {}
    for cam in cams:
        cam_dir = root / camera_folder(cam)
        if not cam_dir.is_dir():
            what = "is a file, expected a camera folder" if cam_dir.exists() else "is missing"
            raise DatasetLayoutError(cam_dir, f"camera folder {what}")
        for pid in pids:
            id_dir = cam_dir / identity_folder(pid)
            if not id_dir.exists():
                continue
            if not id_dir.is_dir():
                raise DatasetLayoutError(id_dir, "identity path is a file, expected a folder")
            names = sorted(
                entry.name
                for entry in os.scandir(id_dir)
                if entry.is_file()
                and not entry.name.startswith(".")
                and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            )
            if not names:
                raise DatasetLayoutError(id_dir, "identity folder holds no images")
            images[(pid, cam)] = names
    return images


def _check_all_present(
    root: Path,
    listed_in: Path,
    pids: list[int],
    cams: tuple[int, ...],
    images: dict[tuple[int, int], list[str]],
) -> None:
    found = {pid for pid, _ in images}
    absent = sorted(pid for pid in pids if pid not in found)
    if absent:
        raise DatasetLayoutError(
            listed_in,
            f"ids listed but without a folder in any of "
            f"{', '.join(camera_folder(c) for c in cams)} under {root}: {_elide(absent)}",
        )


def _relative(cam: int, pid: int, name: str) -> str:
    return f"{camera_folder(cam)}/{identity_folder(pid)}/{name}"


def _elide(values: list[int]) -> str:
    shown = ", ".join(str(v) for v in values[:_MAX_LISTED])
    more = len(values) - _MAX_LISTED
    return shown + (f" (+{more} more)" if more > 0 else "")
