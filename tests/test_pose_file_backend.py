"""The `file` backend (npz caches, COCO JSON import) and the backend factory, in the main venv."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ppa.data.keypoints import KeypointCache, MissingKeypointsError
from ppa.keypoint_extraction import (
    PoseBackendError,
    PoseBackendUnavailableError,
    check_images,
    create_backend,
)
from ppa.keypoint_extraction.coco_json import CocoFormatError, load_coco_keypoints
from ppa.keypoint_extraction.file_backend import FileBackend
from ppa.pose.coco import KEYPOINT_NAMES


def _crop(h: int = 8, w: int = 4) -> np.ndarray:
    return np.zeros((h, w, 3), dtype=np.uint8)


def _kp(value: float) -> np.ndarray:
    return np.full((17, 3), value, dtype=np.float32)


@pytest.fixture()
def npz_source(tmp_path: Path) -> Path:
    cache = KeypointCache(
        {"cam1/0001/0001.jpg": _kp(0.25), "cam3/0001/0002.jpg": _kp(0.75)}, source="synthetic-gt"
    )
    return cache.save(tmp_path / "gt.npz")


def test_npz_source_is_served_exactly(npz_source: Path):
    backend = FileBackend(npz_source)
    assert backend.source == "synthetic-gt"
    out = backend.predict([_crop(), _crop()], ["cam3/0001/0002.jpg", "cam1/0001/0001.jpg"])
    assert out.shape == (2, 17, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], _kp(0.75))
    np.testing.assert_array_equal(out[1], _kp(0.25))


def test_missing_key_errors_or_yields_nan(npz_source: Path):
    with pytest.raises(MissingKeypointsError, match=r"cam2/x\.jpg.*gt\.npz"):
        FileBackend(npz_source).predict([_crop()], ["cam2/x.jpg"])
    out = FileBackend(npz_source, on_missing="skip").predict(
        [_crop(), _crop()], ["cam2/x.jpg", "cam1/0001/0001.jpg"]
    )
    assert np.isnan(out[0]).all()
    np.testing.assert_array_equal(out[1], _kp(0.25))


def test_file_backend_needs_keys(npz_source: Path):
    with pytest.raises(ValueError, match="pass keys"):
        FileBackend(npz_source).predict([_crop()])


def _coco(tmp_path: Path, payload: dict) -> Path:
    path = tmp_path / "person_keypoints.json"
    path.write_text(json.dumps(payload))
    return path


def _triplets(x: float, y: float, v: float) -> list[float]:
    return [x, y, v] * 17


def test_coco_json_import(tmp_path: Path):
    big = _triplets(10.0, 20.0, 2)
    big[2] = 0  # nose not labelled
    big[5] = 1  # left eye labelled, occluded
    payload = {
        "images": [
            {"id": 1, "file_name": "Visible/male/1.bmp", "height": 8, "width": 4},
            {"id": 7, "file_name": ".\\Thermal\\male\\1.bmp"},
            {"id": 9, "file_name": "Thermal/none.bmp"},
        ],
        "annotations": [
            {"id": 100, "image_id": 1, "area": 5.0, "keypoints": _triplets(1.0, 2.0, 2)},
            {"id": 101, "image_id": 1, "area": 50.0, "keypoints": big},
            {"id": 102, "image_id": 7, "bbox": [0, 0, 2, 3], "keypoints": _triplets(3, 4, 1)},
            {"id": 103, "image_id": 9, "category_id": 2, "bbox": [0, 0, 1, 1]},  # no keypoints
        ],
        "categories": [{"id": 1, "name": "person", "keypoints": list(KEYPOINT_NAMES)}],
    }
    coco = load_coco_keypoints(_coco(tmp_path, payload))
    assert sorted(coco.keypoints) == ["Thermal/male/1.bmp", "Visible/male/1.bmp"]
    visible = coco.keypoints["Visible/male/1.bmp"]  # the larger annotation (area 50) wins
    np.testing.assert_array_equal(visible[:, :2], np.tile([10.0, 20.0], (17, 1)))
    assert visible[0, 2] == 0.0 and visible[1, 2] == 1.0 and visible[2, 2] == 1.0
    np.testing.assert_array_equal(coco.keypoints["Thermal/male/1.bmp"][:, 2], np.ones(17))
    assert coco.sizes == {"Visible/male/1.bmp": (8, 4)}

    backend = FileBackend(tmp_path / "person_keypoints.json")
    assert backend.source == "coco-json:person_keypoints.json"
    out = backend.predict([_crop(8, 4)], ["Visible/male/1.bmp"])
    np.testing.assert_array_equal(out[0], visible)
    with pytest.raises(PoseBackendError, match=r"8x4 \(HxW\) but the image is 9x4"):
        backend.predict([_crop(9, 4)], ["Visible/male/1.bmp"])


def test_coco_json_scores_mode_clips(tmp_path: Path):
    triplets = _triplets(1.0, 1.0, 0.4)
    triplets[2] = 1.7
    path = _coco(
        tmp_path,
        {
            "images": [{"id": 1, "file_name": "a.png"}],
            "annotations": [{"id": 5, "image_id": 1, "keypoints": triplets}],
        },
    )
    scores = load_coco_keypoints(path, third="score").keypoints["a.png"][:, 2]
    assert scores[0] == 1.0
    np.testing.assert_allclose(scores[1:], 0.4)
    with pytest.raises(CocoFormatError, match=r"annotation 5 has visibility values \[0\.4, 1\.7\]"):
        load_coco_keypoints(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {
                "images": [{"id": 1, "file_name": "a.png"}],
                "annotations": [{"id": 3, "image_id": 1, "keypoints": [1, 2, 2]}],
            },
            "annotation 3 has keypoints of length 3",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "a.png"}],
                "annotations": [{"id": 4, "image_id": 2, "keypoints": _triplets(0, 0, 2)}],
            },
            "annotation 4 refers to unknown image_id 2",
        ),
        (
            {"images": [{"id": 1, "file_name": "/abs/a.png"}], "annotations": []},
            "must be a path relative",
        ),
        (
            {"images": [{"id": 1, "file_name": "../a.png"}], "annotations": []},
            "must be a path relative",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "a.png"}],
                "annotations": [],
            },
            "listed twice",
        ),
        (
            {
                "images": [],
                "annotations": [],
                "categories": [{"id": 1, "keypoints": ["head", "neck"]}],
            },
            "COCO-17 order",
        ),
        ({"annotations": []}, "'images' and 'annotations'"),
    ],
)
def test_coco_json_errors_name_file_and_entry(tmp_path: Path, payload: dict, message: str):
    path = _coco(tmp_path, payload)
    with pytest.raises(CocoFormatError, match=r"person_keypoints\.json") as info:
        load_coco_keypoints(path)
    assert message in str(info.value)


def test_create_backend_validates_config(tmp_path: Path, npz_source: Path):
    backend = create_backend(
        {"name": "file", "path": str(npz_source), "batch_size": 4, "resume": True}
    )
    assert isinstance(backend, FileBackend)
    with pytest.raises(ValueError, match=r"unknown keys \['pth'\]"):
        create_backend({"name": "file", "pth": "x.npz"})
    with pytest.raises(ValueError, match=r"pose_backend\.path is required"):
        create_backend({"name": "file", "path": None})
    with pytest.raises(ValueError, match="expected one of"):
        create_backend({"name": "openpose"})
    with pytest.raises(ValueError, match="cannot tell the format"):
        create_backend({"name": "file", "path": str(tmp_path / "kp.txt")})


def test_pose_libraries_missing_in_the_training_env_says_how_to_get_them():
    # The training venv deliberately lacks mediapipe (protobuf conflict with Flower).
    with pytest.raises(PoseBackendUnavailableError, match="make pose-setup"):
        create_backend({"name": "mediapipe"})


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4), dtype=np.uint8), r"shape \(4, 4\)"),
        (np.zeros((4, 4, 3), dtype=np.float32), "dtype float32"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "empty"),
    ],
)
def test_check_images_rejects_bad_crops(image: np.ndarray, message: str):
    with pytest.raises(ValueError, match=message):
        check_images([_crop(), image])
