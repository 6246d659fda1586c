"""The mediapipe backend on real photos shipped inside installed wheels (pose venv).

scripts/extract_keypoints.py runs with pose_backend=mediapipe in .venv-pose over a dataset root
made of: scikit-image's astronaut (RGB, upper body), matplotlib's Grace Hopper portrait (JPEG),
scikit-image's cameraman (greyscale on disk, read as 3 equal channels like an IR frame), a
RegDB-sized 64x128 greyscale crop of the astronaut, and two photos without a person (a cat, a
coffee cup). The boxes were drawn by hand by looking at the photos, not from predictions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import data

from ppa.data.keypoints import KeypointCache
from ppa.keypoint_extraction.mediapipe_backend import MediaPipeBackend
from ppa.pose.coco import INDEX

REPO = Path(__file__).resolve().parents[1]
POSE_PYTHON = REPO / ".venv-pose" / "bin" / "python"
SCRIPT = REPO / "scripts" / "extract_keypoints.py"

ASTRONAUT = "cam1/0001/0001.png"
HOPPER = "cam2/0002/0001.jpg"
CAMERAMAN = "cam3/0003/0001.png"
CAT = "cam4/0005/0001.png"
COFFEE = "cam5/0006/0001.png"
SMALL_IR = "cam6/0004/0001.png"
# The small crop: astronaut columns 80..336 (all rows), resized to 64x128 -> factor 0.25.
SMALL_X0, SMALL_SCALE = 80, 0.25

# (x0, y0, x1, y1) in pixels of each photo, checked by eye.
FACE_ASTRONAUT = (175, 80, 275, 175)
BOXES: dict[str, dict[tuple[str, ...], tuple[float, float, float, float]]] = {
    ASTRONAUT: {
        ("nose", "left_eye", "right_eye"): FACE_ASTRONAUT,
        ("left_shoulder",): (250, 200, 370, 320),  # the person's left: image right
        ("right_shoulder",): (40, 200, 180, 320),
    },
    HOPPER: {
        ("nose", "left_eye", "right_eye"): (200, 150, 340, 290),
        ("left_shoulder",): (360, 340, 512, 500),
        ("right_shoulder",): (0, 340, 170, 500),
    },
    CAMERAMAN: {
        ("nose",): (185, 90, 280, 200),
        ("left_shoulder", "right_shoulder"): (60, 110, 300, 260),
        ("left_hip", "right_hip"): (0, 260, 230, 440),
    },
    SMALL_IR: {  # the astronaut boxes mapped into the 64x128 crop
        ("nose", "left_eye", "right_eye"): (
            (FACE_ASTRONAUT[0] - SMALL_X0) * SMALL_SCALE,
            FACE_ASTRONAUT[1] * SMALL_SCALE,
            (FACE_ASTRONAUT[2] - SMALL_X0) * SMALL_SCALE,
            FACE_ASTRONAUT[3] * SMALL_SCALE,
        ),
    },
}
MIN_SCORE_IN_BOX = 0.5


def pose_python() -> Path:
    if not POSE_PYTHON.is_file():
        pytest.fail(
            f"{POSE_PYTHON} is missing: run `make pose-setup` (`make test` does it "
            "first) to build the pose environment",
            pytrace=False,
        )
    return POSE_PYTHON


def backend_override(name: str) -> str:
    """`pose_backend=X` once configs/config.yaml lists the group in its defaults, else `+...`."""
    defaults = yaml.safe_load((REPO / "configs" / "config.yaml").read_text())["defaults"]
    listed = any(isinstance(item, dict) and "pose_backend" in item for item in defaults)
    return f"pose_backend={name}" if listed else f"+pose_backend={name}"


def _write_photos(root: Path) -> None:
    def save(key: str, array: np.ndarray) -> None:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / key)

    astronaut = data.astronaut()
    save(ASTRONAUT, astronaut)
    (root / HOPPER).parent.mkdir(parents=True)
    shutil.copyfile(
        matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), root / HOPPER
    )
    save(CAMERAMAN, data.camera())  # mode L on disk
    small = Image.fromarray(np.ascontiguousarray(astronaut[:, SMALL_X0 : SMALL_X0 + 256]))
    save(SMALL_IR, np.asarray(small.resize((64, 128), Image.BILINEAR).convert("L")))
    save(CAT, data.chelsea())
    save(COFFEE, data.coffee())


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeypointCache, dict]:
    work = tmp_path_factory.mktemp("mediapipe")
    root = work / "photos"
    _write_photos(root)
    cmd = [
        str(pose_python()),
        str(SCRIPT),
        f"dataset.root={root}",
        backend_override("mediapipe"),
        "pose_backend.batch_size=4",
        f"hydra.run.dir={work / 'hydra'}",
        "hydra.output_subdir=null",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cache = KeypointCache.load(root / "keypoints.npz")
    report = json.loads((root / "keypoints.report.json").read_text())
    return cache, report


@pytest.mark.parametrize("key", list(BOXES))
def test_keypoints_fall_inside_hand_checked_boxes(extracted, key: str):
    cache, _ = extracted
    kp = cache[key]
    for names, (x0, y0, x1, y1) in BOXES[key].items():
        for name in names:
            x, y, score = kp[INDEX[name]]
            assert score >= MIN_SCORE_IN_BOX, f"{key} {name}: score {score:.2f}"
            assert x0 <= x <= x1 and y0 <= y <= y1, f"{key} {name} at ({x:.0f}, {y:.0f})"


def test_joints_out_of_frame_get_low_scores(extracted):
    cache, report = extracted
    low = report["min_confidence"]
    for key in (ASTRONAUT, HOPPER):  # both photos end at the waist
        for name in ("left_knee", "right_knee", "left_ankle", "right_ankle"):
            assert cache[key][INDEX[name], 2] < low, f"{key} {name}"


def test_photos_without_a_person_are_flagged(extracted):
    cache, report = extracted
    for key in (CAT, COFFEE):
        np.testing.assert_array_equal(cache[key], np.zeros((17, 3), np.float32))
    assert report["no_person"] == [CAT, COFFEE]


def test_report_counts_per_camera(extracted):
    _, report = extracted
    rates = {cam: (s["images"], s["detected"]) for cam, s in report["per_camera"].items()}
    assert rates == {
        "cam1": (1, 1),
        "cam2": (1, 1),
        "cam3": (1, 1),
        "cam4": (1, 0),
        "cam5": (1, 0),
        "cam6": (1, 1),
    }
    assert report["overall"]["detected"] == 4 and report["overall"]["images"] == 6
    assert report["source"] == "mediapipe-0.10.14:pose_landmark_full.tflite"
    assert report["per_camera"]["cam4"]["mean_confidence"] == 0.0


def test_invalid_settings_fail_before_importing_mediapipe():
    # Runs in the main venv: argument checks come first, so the message is about the setting.
    with pytest.raises(ValueError, match="CPU only"):
        MediaPipeBackend(device="cuda")
    with pytest.raises(ValueError, match="model_complexity=3"):
        MediaPipeBackend(model_complexity=3)
    with pytest.raises(ValueError, match="min_detection_confidence"):
        MediaPipeBackend(min_detection_confidence=1.5)


def test_synthetic_sysu_detection_rate_is_reported(tmp_path: Path):
    """On the renderer's persons the detection rate is a number to watch, not a target: check
    that the report accounts for every image and agrees with the cache it describes."""
    from ppa.synthetic.writer import write_synthetic_sysu

    root = tmp_path / "synthetic_sysu"
    write_synthetic_sysu(
        root,
        num_train_ids=3,
        num_val_ids=1,
        num_test_ids=2,
        images_per_camera=1,
        image_height=128,
        image_width=64,
        camera_coverage=0.85,
        seed=0,
    )
    gt = KeypointCache.load(root / "keypoints.npz")
    cmd = [
        str(pose_python()),
        str(SCRIPT),
        f"dataset.root={root}",
        backend_override("mediapipe"),
        "dataset.keypoints=keypoints_mediapipe.npz",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "hydra.output_subdir=null",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cache = KeypointCache.load(root / "keypoints_mediapipe.npz")
    report = json.loads((root / "keypoints_mediapipe.report.json").read_text())
    assert sorted(cache) == sorted(gt)
    per_camera = report["per_camera"]
    assert sum(s["images"] for s in per_camera.values()) == len(gt) == report["images_total"]
    missed = {cam: s["images"] - s["detected"] for cam, s in per_camera.items()}
    flagged: dict[str, int] = {}
    for key in report["no_person"]:
        flagged[key.split("/")[0]] = flagged.get(key.split("/")[0], 0) + 1
    assert {cam: n for cam, n in missed.items() if n} == flagged
    for cam, stats in per_camera.items():
        scores = np.stack([cache[k][:, 2] for k in cache if k.startswith(cam + "/")])
        assert stats["mean_confidence"] == pytest.approx(float(scores.mean()), abs=1e-4)
