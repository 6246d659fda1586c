"""SYSU-MM01 reader on tiny on-disk layouts: order, labels, the trial gallery, every error."""

from __future__ import annotations

import io
import os
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from ppa.data import sysu
from ppa.data.errors import DatasetLayoutError
from ppa.data.records import ImageRecord, Modality, TrainRecord
from ppa.data.splits import TestSplit


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 4, 3), 128, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


JPEG = _jpeg_bytes()


def write_sysu(root, *, train, val, test, folders, cameras=range(1, 7)):
    """SYSU layout with `folders[(cam, pid)]` = number of images 0001.jpg..; ids as listed."""
    for cam in cameras:
        (root / f"cam{cam}").mkdir(parents=True, exist_ok=True)
    (root / "exp").mkdir(parents=True, exist_ok=True)
    for name, ids in (("train_id", train), ("val_id", val), ("test_id", test)):
        (root / "exp" / f"{name}.txt").write_text(",".join(str(i) for i in ids) + "\n")
    for (cam, pid), count in folders.items():
        folder = root / f"cam{cam}" / f"{pid:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, count + 1):
            (folder / f"{i:04d}.jpg").write_bytes(JPEG)
    return root


# Test ids listed unsorted; gallery folders (visible cams) and query folders (cams 3, 6).
TEST_FOLDERS = {
    (1, 3): 4,
    (2, 3): 3,
    (5, 3): 12,
    (3, 3): 2,
    (6, 3): 1,
    (1, 5): 2,
    (4, 5): 5,
    (5, 5): 1,
    (3, 5): 3,
    (2, 9): 6,
    (4, 9): 2,
    (6, 9): 2,
}
TRAIN_FOLDERS = {
    (1, 2): 2,
    (3, 2): 1,
    (6, 2): 2,
    (2, 7): 1,
    (4, 7): 3,
    (5, 1): 2,
    (3, 1): 2,
}


@pytest.fixture()
def root(tmp_path):
    return write_sysu(
        tmp_path / "SYSU-MM01",
        train=[7, 1],
        val=[2],
        test=[5, 3, 9],
        folders={**TEST_FOLDERS, **TRAIN_FOLDERS},
    )


def reference_gallery(root, mode, trial, shots):
    """The gallery walk as the literature's reference code does it (global `random`)."""
    cams = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    with open(os.path.join(root, "exp", "test_id.txt")) as handle:
        ids = [f"{int(i):04d}" for i in handle.read().splitlines()[0].split(",")]
    random.seed(trial)
    picked = []
    for pid in sorted(ids):
        for cam in cams:
            folder = os.path.join(root, cam, pid)
            if os.path.isdir(folder):
                files = sorted(os.path.join(cam, pid, name) for name in os.listdir(folder))
                if shots == 1:
                    picked.append(random.choice(files))
                else:
                    picked.extend(random.sample(files, min(10, len(files))))
    return picked


# Computed once from the rule (random.seed(trial); sorted ids 3, 5, 9; cams in order).
EXPECTED_SINGLE = {
    ("all", 0): [
        "cam1/0003/0004.jpg",
        "cam2/0003/0002.jpg",
        "cam5/0003/0001.jpg",
        "cam1/0005/0002.jpg",
        "cam4/0005/0005.jpg",
        "cam5/0005/0001.jpg",
        "cam2/0009/0004.jpg",
        "cam4/0009/0002.jpg",
    ],
    ("all", 1): [
        "cam1/0003/0002.jpg",
        "cam2/0003/0003.jpg",
        "cam5/0003/0002.jpg",
        "cam1/0005/0002.jpg",
        "cam4/0005/0001.jpg",
        "cam5/0005/0001.jpg",
        "cam2/0009/0004.jpg",
        "cam4/0009/0002.jpg",
    ],
    ("indoor", 0): [
        "cam1/0003/0004.jpg",
        "cam2/0003/0002.jpg",
        "cam1/0005/0001.jpg",
        "cam2/0009/0003.jpg",
    ],
    ("indoor", 1): [
        "cam1/0003/0002.jpg",
        "cam2/0003/0003.jpg",
        "cam1/0005/0001.jpg",
        "cam2/0009/0003.jpg",
    ],
}


def test_camera_constants_and_modalities():
    assert sysu.VISIBLE_CAMERAS == (1, 2, 4, 5)
    assert sysu.INFRARED_CAMERAS == (3, 6)
    assert sysu.INDOOR_VISIBLE_CAMERAS == (1, 2)
    assert [sysu.camera_modality(c).value for c in range(1, 7)] == [
        "visible",
        "visible",
        "infrared",
        "visible",
        "visible",
        "infrared",
    ]
    with pytest.raises(ValueError, match="camera 7"):
        sysu.camera_modality(7)


@pytest.mark.parametrize(("mode", "trial"), sorted(EXPECTED_SINGLE))
def test_single_shot_gallery_matches_hand_expectation_and_reference(root, mode, trial):
    split = sysu.load_test_split(root, mode=mode, trial=trial, shots=1)
    paths = [r.path for r in split.gallery]
    assert paths == EXPECTED_SINGLE[(mode, trial)]
    assert paths == reference_gallery(root, mode, trial, 1)
    assert all(r.modality is Modality.VISIBLE for r in split.gallery)
    assert [(r.pid, r.cam) for r in split.gallery] == [
        (int(p.split("/")[1]), int(p.split("/")[0][3:])) for p in paths
    ]


@pytest.mark.parametrize("trial", [0, 1])
@pytest.mark.parametrize("mode", ["all", "indoor"])
def test_multi_shot_gallery_matches_reference(root, mode, trial):
    split = sysu.load_test_split(root, mode=mode, trial=trial, shots=10)
    paths = [r.path for r in split.gallery]
    assert paths == reference_gallery(root, mode, trial, 10)
    # 10 of the 12 images of (id 3, cam 5), all images of smaller folders, no repeats.
    assert sum(p.startswith("cam5/0003/") for p in paths) == (10 if mode == "all" else 0)
    assert sum(p.startswith("cam1/0003/") for p in paths) == 4
    assert len(set(paths)) == len(paths)


def test_gallery_walk_shares_one_stream_across_ids(root):
    """Re-seeding per id or per camera would repeat the first draw; one stream does not."""
    many = sysu.load_test_splits(root, mode="all", trials=[0, 1, 2], shots=1)
    assert [[r.path for r in s.gallery] for s in many] == [
        reference_gallery(root, "all", t, 1) for t in (0, 1, 2)
    ]
    # Seeding the global random must not be what the reader relies on (or changes).
    random.seed(12345)
    state = random.getstate()
    sysu.load_test_split(root, trial=0)
    assert random.getstate() == state


@pytest.mark.parametrize("mode", ["all", "indoor"])
def test_query_is_every_infrared_image_of_sorted_test_ids(root, mode):
    query, gallery = sysu.load_test_split(root, mode=mode, trial=0)
    assert len(gallery) == len(EXPECTED_SINGLE[(mode, 0)])
    assert [r.path for r in query] == [
        "cam3/0003/0001.jpg",
        "cam3/0003/0002.jpg",
        "cam6/0003/0001.jpg",
        "cam3/0005/0001.jpg",
        "cam3/0005/0002.jpg",
        "cam3/0005/0003.jpg",
        "cam6/0009/0001.jpg",
        "cam6/0009/0002.jpg",
    ]
    assert query[0] == ImageRecord("cam3/0003/0001.jpg", 3, 3, Modality.INFRARED)
    assert all(r.modality is Modality.INFRARED for r in query)
    assert isinstance(sysu.load_test_split(root), TestSplit)


def test_train_set_order_labels_and_modalities(root):
    train = sysu.load_train_set(root)
    assert train.num_classes == 3
    assert train.pid_to_label == {1: 0, 2: 1, 7: 2}
    assert [r.path for r in train.records] == [
        "cam3/0001/0001.jpg",
        "cam3/0001/0002.jpg",
        "cam5/0001/0001.jpg",
        "cam5/0001/0002.jpg",
        "cam1/0002/0001.jpg",
        "cam1/0002/0002.jpg",
        "cam3/0002/0001.jpg",
        "cam6/0002/0001.jpg",
        "cam6/0002/0002.jpg",
        "cam2/0007/0001.jpg",
        "cam4/0007/0001.jpg",
        "cam4/0007/0002.jpg",
        "cam4/0007/0003.jpg",
    ]
    assert train.records[0] == TrainRecord("cam3/0001/0001.jpg", 1, 3, Modality.INFRARED, 0)
    assert train.records[-1] == TrainRecord("cam4/0007/0003.jpg", 7, 4, Modality.VISIBLE, 2)
    assert train.modalities == (Modality.VISIBLE, Modality.INFRARED)
    assert {r.pid for r in train.records}.isdisjoint({3, 5, 9})


def test_site_root_with_only_its_cameras_keeps_the_global_label_space(tmp_path, root):
    site = write_sysu(
        tmp_path / "site_ir",
        train=[7, 1],
        val=[2],
        test=[5, 3, 9],
        folders={k: v for k, v in TRAIN_FOLDERS.items() if k[0] in (3, 6)},
        cameras=(3, 6),
    )
    with pytest.raises(DatasetLayoutError, match="cam1"):
        sysu.load_train_set(site)
    with pytest.raises(DatasetLayoutError, match="7"):
        sysu.load_train_set(site, cameras=(3, 6))  # id 7 has no infrared folder
    train = sysu.load_train_set(site, cameras=(3, 6), require_all_ids=False)
    full = sysu.load_train_set(root)
    assert train.num_classes == full.num_classes == 3
    assert train.pid_to_label == full.pid_to_label
    assert train.records == [r for r in full.records if r.cam in (3, 6)]
    with pytest.raises(DatasetLayoutError, match="cam2"):
        sysu.load_train_set(site, cameras=(2, 3), require_all_ids=False)


def test_stray_files_are_ignored(root):
    folder = root / "cam1" / "0002"
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / "Thumbs.db").write_bytes(b"x")
    (folder / "notes.txt").write_text("x")
    paths = [r.path for r in sysu.load_train_set(root).records if r.cam == 1]
    assert paths == ["cam1/0002/0001.jpg", "cam1/0002/0002.jpg"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("\n\n", "empty"),
        ("1,2,x", "entry 3 is 'x'"),
        ("1,,2", "entry 2 is ''"),
        ("1,2\n3", "2 non-empty lines"),
        ("1,2,1", "more than once: 1"),
        ("1,-2", "negative"),
    ],
)
def test_malformed_split_files(root, content, message):
    path = root / "exp" / "train_id.txt"
    path.write_text(content)
    with pytest.raises(DatasetLayoutError, match=message) as info:
        sysu.load_train_set(root)
    assert info.value.path == path


def test_split_file_errors_name_the_file(root):
    (root / "exp" / "val_id.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"val_id.txt.*missing"):
        sysu.load_train_set(root)
    (root / "exp" / "test_id.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"test_id.txt.*missing"):
        sysu.load_test_split(root)


def test_overlapping_train_and_val_ids(root):
    (root / "exp" / "val_id.txt").write_text("2,7")
    with pytest.raises(DatasetLayoutError, match=r"both train_id.txt and val_id.txt: 7"):
        sysu.load_train_set(root)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist") as info:
        sysu.load_train_set(tmp_path / "nowhere")
    assert info.value.path == tmp_path / "nowhere"
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        sysu.load_test_split(tmp_path / "nowhere")


def test_camera_path_that_is_a_file(root):
    shutil.rmtree(root / "cam4")
    (root / "cam4").write_text("oops")
    with pytest.raises(DatasetLayoutError, match="is a file") as info:
        sysu.load_train_set(root)
    assert info.value.path == root / "cam4"
    with pytest.raises(DatasetLayoutError, match="is a file"):
        sysu.load_test_split(root, mode="all")
    # The indoor search never reads cam4.
    assert sysu.load_test_split(root, mode="indoor").gallery


def test_missing_camera_folder(root):
    shutil.rmtree(root / "cam6")
    with pytest.raises(DatasetLayoutError, match="missing") as info:
        sysu.load_train_set(root)
    assert info.value.path == root / "cam6"


def test_listed_id_without_any_folder(root):
    (root / "exp" / "train_id.txt").write_text("7,1,4")
    with pytest.raises(DatasetLayoutError, match=r"ids listed but without a folder.*: 4") as info:
        sysu.load_train_set(root)
    assert info.value.path == root / "exp" / "train_id.txt"
    (root / "exp" / "test_id.txt").write_text("5,3,9,11")
    with pytest.raises(DatasetLayoutError, match=": 11"):
        sysu.load_test_split(root)


def test_empty_identity_folder(root):
    (root / "cam4" / "0001").mkdir()
    with pytest.raises(DatasetLayoutError, match="no images") as info:
        sysu.load_train_set(root)
    assert info.value.path == root / "cam4" / "0001"
    (root / "cam2" / "0005").mkdir()
    with pytest.raises(DatasetLayoutError, match="no images"):
        sysu.load_test_split(root)


def test_identity_path_that_is_a_file(root):
    (root / "cam2" / "0001").write_text("x")
    with pytest.raises(DatasetLayoutError, match="identity path is a file"):
        sysu.load_train_set(root)


def test_bad_arguments(root):
    with pytest.raises(ValueError, match="mode"):
        sysu.load_test_split(root, mode="outdoor")
    with pytest.raises(ValueError, match="shots"):
        sysu.load_test_split(root, shots=5)
    with pytest.raises(ValueError, match="trial"):
        sysu.load_test_split(root, trial=-1)
    with pytest.raises(ValueError, match="cameras"):
        sysu.load_train_set(root, cameras=(0, 3))


def test_label_space_from_split_files_alone(tmp_path, root):
    bare = tmp_path / "server"
    (bare / "exp").mkdir(parents=True)
    for name in ("train_id.txt", "val_id.txt"):
        (bare / "exp" / name).write_text((root / "exp" / name).read_text())
    assert (
        sysu.read_label_space(bare) == sysu.load_train_set(root).pid_to_label == {1: 0, 2: 1, 7: 2}
    )
