"""RegDB reader on a tiny on-disk layout: order, relabelling, directions, every error."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from ppa.data import regdb
from ppa.data.errors import DatasetLayoutError
from ppa.data.records import ImageRecord, Modality, TrainRecord


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 4), 90, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png_bytes()
FOLDER = {Modality.VISIBLE: "Visible", Modality.INFRARED: "Thermal"}
TAG = {Modality.VISIBLE: "visible", Modality.INFRARED: "thermal"}


def image_path(modality, pid, i):
    return f"{FOLDER[modality]}/{pid}/{TAG[modality][0]}_{pid}_{i}.png"


def write_regdb(root, splits, *, images=2, modalities=tuple(Modality)):
    """splits[trial] = (train labels, test labels); `images` per (modality, identity)."""
    (root / "idx").mkdir(parents=True, exist_ok=True)
    for trial, (train, test) in splits.items():
        for part, labels in (("train", train), ("test", test)):
            for modality in Modality:
                lines = [
                    f"{image_path(modality, pid, i)} {pid}" for pid in labels for i in range(images)
                ]
                (root / "idx" / f"{part}_{TAG[modality]}_{trial}.txt").write_text(
                    "\n".join(lines) + "\n"
                )
                if modality not in modalities:
                    continue
                for pid in labels:
                    for i in range(images):
                        path = root / image_path(modality, pid, i)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(PNG)
    return root


@pytest.fixture()
def root(tmp_path):
    # Original labels are not 0-based and the train file lists them unsorted.
    return write_regdb(tmp_path / "RegDB", {1: ([12, 10, 15], [20, 21]), 2: ([20, 15], [10])})


def test_train_set_relabels_sorted_original_labels(root):
    train = regdb.load_train_set(root, trial=1)
    assert train.num_classes == 3
    assert train.pid_to_label == {10: 0, 12: 1, 15: 2}
    assert train.records[:2] == [
        TrainRecord("Visible/12/v_12_0.png", 12, 1, Modality.VISIBLE, 1),
        TrainRecord("Visible/12/v_12_1.png", 12, 1, Modality.VISIBLE, 1),
    ]
    # Visible lines in file order, then thermal lines in file order.
    assert [(r.cam, r.pid) for r in train.records] == (
        [(1, 12)] * 2
        + [(1, 10)] * 2
        + [(1, 15)] * 2
        + [(2, 12)] * 2
        + [(2, 10)] * 2
        + [(2, 15)] * 2
    )
    assert {r.modality for r in train.records if r.cam == 2} == {Modality.INFRARED}
    assert regdb.load_train_set(root, trial=2).pid_to_label == {15: 0, 20: 1}


@pytest.mark.parametrize(
    ("direction", "query_modality"),
    [("visible_to_thermal", Modality.VISIBLE), ("thermal_to_visible", Modality.INFRARED)],
)
def test_test_split_directions(root, direction, query_modality):
    query, gallery = regdb.load_test_split(root, trial=1, direction=direction)
    other = Modality.INFRARED if query_modality is Modality.VISIBLE else Modality.VISIBLE
    assert query == [
        ImageRecord(
            image_path(query_modality, pid, i), pid, regdb.CAMERA_OF[query_modality], query_modality
        )
        for pid in (20, 21)
        for i in range(2)
    ]
    assert [r.path for r in gallery] == [
        image_path(other, pid, i) for pid in (20, 21) for i in range(2)
    ]
    assert {r.cam for r in gallery} == {regdb.CAMERA_OF[other]}
    # Test labels stay the original ids.
    assert [r.pid for r in query] == [20, 20, 21, 21]


def test_one_modality_site_agrees_on_labels(tmp_path, root):
    site = write_regdb(
        tmp_path / "thermal_site", {1: ([12, 10, 15], [20, 21])}, modalities=(Modality.INFRARED,)
    )
    with pytest.raises(DatasetLayoutError, match="missing"):
        regdb.load_train_set(site, trial=1)
    train = regdb.load_train_set(site, trial=1, modalities=["thermal"])
    full = regdb.load_train_set(root, trial=1)
    assert train.pid_to_label == full.pid_to_label and train.num_classes == 3
    assert train.records == [r for r in full.records if r.modality is Modality.INFRARED]
    relaxed = regdb.load_train_set(site, trial=1, require_all_files=False)
    assert relaxed.records == train.records


def test_missing_index_file_is_named(root):
    path = root / "idx" / "train_thermal_1.txt"
    path.unlink()
    with pytest.raises(DatasetLayoutError, match="index file is missing") as info:
        regdb.load_train_set(root, trial=1)
    assert info.value.path == path
    with pytest.raises(DatasetLayoutError, match=r"test_visible_7\.txt"):
        regdb.load_test_split(root, trial=7)


def test_listed_file_missing_names_image_index_and_line(root):
    (root / "Thermal" / "21" / "t_21_1.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"test_thermal_1\.txt \(line 4\)") as info:
        regdb.load_test_split(root, trial=1)
    assert info.value.path == root / "Thermal" / "21" / "t_21_1.png"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Visible/12/v_12_0.png", "line 2: expected '<relative path> <label>'"),
        ("Visible/12/v_12_0.png twelve", "line 2: label 'twelve' is not an integer"),
        ("Visible/12/v_12_0.png -1", "line 2: negative label"),
        ("/abs/v.png 12", "line 2: image path '/abs/v.png' must be relative"),
        ("../outside.png 12", "line 2: image path '../outside.png' must be relative"),
    ],
)
def test_bad_lines_report_the_line_number(root, line, message):
    path = root / "idx" / "train_visible_1.txt"
    lines = path.read_text().splitlines()
    lines[1] = line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetLayoutError, match=re.escape(message)) as info:
        regdb.load_train_set(root, trial=1)
    assert info.value.path == path


def test_index_parsing_details(tmp_path):
    path = tmp_path / "idx.txt"
    path.write_text("\nVisible/with space/a.png 3\r\n  Thermal\\b.png 4  \n\n")
    assert regdb.read_index_file(path) == [
        regdb.IndexEntry("Visible/with space/a.png", 3, 2),
        regdb.IndexEntry("Thermal/b.png", 4, 3),
    ]
    path.write_text("\n\n")
    with pytest.raises(DatasetLayoutError, match="lists no images"):
        regdb.read_index_file(path)


def test_bad_arguments(root, tmp_path):
    with pytest.raises(ValueError, match="direction"):
        regdb.load_test_split(root, direction="up")
    with pytest.raises(ValueError, match="trial"):
        regdb.load_train_set(root, trial=0)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        regdb.load_train_set(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="camera 3"):
        regdb.camera_modality(3)


def test_label_space_from_index_files_alone(tmp_path, root):
    bare = tmp_path / "server"
    (bare / "idx").mkdir(parents=True)
    for name in ("train_visible_2.txt", "train_thermal_2.txt"):
        (bare / "idx" / name).write_text((root / "idx" / name).read_text())
    assert regdb.read_label_space(bare, trial=2) == {15: 0, 20: 1}
    assert regdb.read_label_space(root, trial=1) == regdb.load_train_set(root, 1).pid_to_label
