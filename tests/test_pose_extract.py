"""scripts/extract_keypoints.py and its engine with the `file` backend (main venv): exact cache
reproduction, report counts, resume, checkpoints, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ppa.data.keypoints import KeypointCache
from ppa.keypoint_extraction.extraction import (
    CacheSourceMismatchError,
    ExtractionSettings,
    camera_of,
    extract_keypoints,
    list_images,
    open_cache,
    report_path_for,
)
from ppa.keypoint_extraction.file_backend import FileBackend

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "extract_keypoints.py"

A, B, C = "cam1/0001/0001.jpg", "cam1/0002/0001.png", "cam3/0001/0001.jpg"
CORRUPT = "cam6/9999/9999.jpg"  # sorts after every other image


def backend_override(name: str) -> str:
    """`pose_backend=X` once configs/config.yaml lists the group in its defaults, else `+...`."""
    defaults = yaml.safe_load((REPO / "configs" / "config.yaml").read_text())["defaults"]
    listed = any(isinstance(item, dict) and "pose_backend" in item for item in defaults)
    return f"pose_backend={name}" if listed else f"+pose_backend={name}"


def run_script(
    python: str | Path, root: Path, backend: str, *overrides: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    cmd = [
        str(python),
        str(SCRIPT),
        f"dataset.root={root}",
        backend_override(backend),
        f"hydra.run.dir={root.parent / 'hydra'}",
        "hydra.output_subdir=null",
        *overrides,
    ]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, check=False
    )


def _keypoints(rng: np.random.Generator, scores: Sequence[float]) -> np.ndarray:
    kp = np.empty((17, 3), dtype=np.float32)
    kp[:, :2] = rng.uniform(0, 16, size=(17, 2))
    kp[:, 2] = scores
    return kp


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path, KeypointCache]:
    """A tiny SYSU-like root (3 images + noise) and a ground-truth cache outside it."""
    rng = np.random.default_rng(0)
    root = tmp_path / "root"
    for key in (A, B, C):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)).save(root / key)
    (root / "exp").mkdir()
    (root / "exp" / "train_id.txt").write_text("1,2\n")  # not an image
    (root / ".trash").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / ".trash" / "old.png")  # hidden
    gt = KeypointCache(source="synthetic-gt")
    gt[A] = _keypoints(rng, [0.9] * 17)  # detected
    gt[B] = _keypoints(rng, [0.9] * 4 + [0.1] * 13)  # 4 confident joints: no person
    gt[C] = _keypoints(rng, [0.3] * 5 + [0.0] * 12)  # exactly 5 at the threshold
    gt_file = gt.save(tmp_path / "gt.npz")
    return root, gt_file, gt


def _report(root: Path, name: str = "keypoints.npz") -> dict:
    return json.loads(report_path_for(root / name).read_text())


def test_script_reproduces_the_source_cache_and_counts(dataset):
    root, gt_file, gt = dataset
    proc = run_script(sys.executable, root, "file", f"pose_backend.path={gt_file}")
    assert proc.returncode == 0, proc.stderr

    out = KeypointCache.load(root / "keypoints.npz")
    assert sorted(out) == sorted(gt) and out.source == gt.source
    for key in gt:
        np.testing.assert_array_equal(out[key], gt[key])

    report = _report(root)
    assert report["images_total"] == 3 and report["processed"] == 3
    assert report["already_cached"] == 0
    # cam1: A detected, B not; mean score (17*0.9 + 4*0.9 + 13*0.1) / 34 = 20.2 / 34
    assert report["per_camera"]["cam1"] == {
        "images": 2,
        "detected": 1,
        "detection_rate": 0.5,
        "mean_confidence": 0.5941,
    }
    # cam3: C has exactly min_joints=5 joints at min_confidence=0.3 -> counts; mean 1.5 / 17
    assert report["per_camera"]["cam3"] == {
        "images": 1,
        "detected": 1,
        "detection_rate": 1.0,
        "mean_confidence": 0.0882,
    }
    assert report["overall"] == {
        "images": 3,
        "detected": 2,
        "detection_rate": 0.6667,
        "mean_confidence": 0.4255,
    }
    assert report["no_person"] == [B]
    assert "1 images with no confident person" in proc.stderr + proc.stdout


def test_script_resume_skips_cached_images(dataset):
    root, gt_file, gt = dataset
    marker = np.full((17, 3), 0.5, dtype=np.float32)
    KeypointCache({A: marker}, source="synthetic-gt").save(root / "keypoints.npz")

    proc = run_script(sys.executable, root, "file", f"pose_backend.path={gt_file}")
    assert proc.returncode == 0, proc.stderr
    out = KeypointCache.load(root / "keypoints.npz")
    np.testing.assert_array_equal(out[A], marker)  # untouched: it was already done
    np.testing.assert_array_equal(out[B], gt[B])
    report = _report(root)
    assert (report["already_cached"], report["processed"]) == (1, 2)

    proc = run_script(
        sys.executable, root, "file", f"pose_backend.path={gt_file}", "pose_backend.resume=false"
    )
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(KeypointCache.load(root / "keypoints.npz")[A], gt[A])
    assert _report(root)["processed"] == 3


def test_script_failure_keeps_progress_and_rerun_finishes(dataset):
    root, gt_file, _ = dataset
    (root / CORRUPT).parent.mkdir(parents=True)
    (root / CORRUPT).write_bytes(b"\xff\xd8 not really a jpeg")

    proc = run_script(
        sys.executable, root, "file", f"pose_backend.path={gt_file}", "pose_backend.batch_size=1"
    )
    assert proc.returncode != 0
    assert CORRUPT in proc.stderr
    assert sorted(KeypointCache.load(root / "keypoints.npz")) == [A, B, C]  # saved on failure

    proc = run_script(
        sys.executable, root, "file", f"pose_backend.path={gt_file}", "dataset.on_bad_image=skip"
    )
    assert proc.returncode == 0, proc.stderr
    report = _report(root)
    assert (report["images_total"], report["already_cached"], report["processed"]) == (4, 3, 0)
    assert report["unreadable"] == [CORRUPT]


def test_script_refuses_to_mix_backends_in_one_cache(dataset):
    root, gt_file, _ = dataset
    KeypointCache({A: np.zeros((17, 3))}, source="mediapipe-0.10.14").save(root / "keypoints.npz")
    proc = run_script(sys.executable, root, "file", f"pose_backend.path={gt_file}")
    assert proc.returncode != 0
    assert "resuming would mix two backends" in proc.stderr
    assert "pose_backend.resume=false" in proc.stderr


class _ObservingFileBackend(FileBackend):
    """A real FileBackend that records how many entries the cache file on disk holds."""

    def __init__(self, path: Path, cache_file: Path, **kwargs):
        super().__init__(path, **kwargs)
        self.cache_file = cache_file
        self.seen_on_disk: list[int] = []

    def _predict(self, images, keys):
        on_disk = len(KeypointCache.load(self.cache_file)) if self.cache_file.exists() else 0
        self.seen_on_disk.append(on_disk)
        return super()._predict(images, keys)


def test_cache_is_checkpointed_every_n_images(tmp_path: Path):
    root = tmp_path / "root"
    gt = KeypointCache(source="gt")
    for i in range(5):
        key = f"Visible/{i}.bmp"
        (root / "Visible").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 4, 3), i, np.uint8)).save(root / key)
        gt[key] = np.full((17, 3), i / 10, dtype=np.float32)
    gt_file = gt.save(tmp_path / "gt.npz")
    cache_file = root / "keypoints.npz"
    backend = _ObservingFileBackend(gt_file, cache_file)
    settings = ExtractionSettings(batch_size=1, checkpoint_every=2)

    report = extract_keypoints(backend, root, cache_file, settings, progress=False)
    assert backend.seen_on_disk == [0, 0, 2, 2, 4]
    assert len(KeypointCache.load(cache_file)) == 5
    assert report.per_camera["Visible"].images == 5
    # scores 0.0 .. 0.4: only images 3 and 4 (0.3, 0.4) have joints >= 0.3
    assert report.per_camera["Visible"].detected == 2


def test_unanswered_images_are_reported_not_cached(dataset):
    root, gt_file, gt = dataset
    partial = KeypointCache({A: gt[A]}, source=gt.source).save(gt_file.parent / "partial.npz")
    backend = FileBackend(partial, on_missing="skip")
    report = extract_keypoints(backend, root, root / "kp.npz", ExtractionSettings(), progress=False)
    assert report.unanswered == [B, C]
    assert sorted(KeypointCache.load(root / "kp.npz")) == [A]
    assert report.overall.images == 1


def test_resume_guard_and_fresh_start(tmp_path: Path):
    cache_file = tmp_path / "kp.npz"
    KeypointCache({A: np.zeros((17, 3))}, source="mmpose:x").save(cache_file)
    with pytest.raises(CacheSourceMismatchError, match=r"kp\.npz holds 1 entries from 'mmpose:x'"):
        open_cache(cache_file, "mediapipe", resume=True)
    assert len(open_cache(cache_file, "mediapipe", resume=False)) == 0
    assert len(open_cache(cache_file, "mmpose:x", resume=True)) == 1


def test_list_images_and_camera_groups(tmp_path: Path):
    for key in (
        "Visible/male/1.bmp",
        "Thermal/female/2.BMP",
        "cam4/0007/0001.JPEG",
        "top.png",
        "notes.txt",
        ".cache/x.png",
        "Visible/.x.png",
    ):
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(b"")
    (tmp_path / "Visible" / "keypoints.png").write_bytes(b"")  # a cache path to exclude
    keys = list_images(tmp_path, exclude=[tmp_path / "Visible" / "keypoints.png"])
    # top.png sits at the top of the root (like the synthetic preview.png): not a crop
    assert keys == ["Thermal/female/2.BMP", "Visible/male/1.bmp", "cam4/0007/0001.JPEG"]
    assert [camera_of(k) for k in keys] == ["Thermal", "Visible", "cam4"]
    assert camera_of("top.png") == "."
    with pytest.raises(FileNotFoundError, match="missing"):
        list_images(tmp_path / "missing")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("checkpoint_every", 0),
        ("min_confidence", 1.5),
        ("min_joints", 18),
        ("on_bad_image", "ignore"),
    ],
)
def test_settings_are_validated(field: str, value):
    with pytest.raises(ValueError, match=field):
        ExtractionSettings(**{field: value})


def test_script_on_a_synthetic_sysu_set_reproduces_its_ground_truth(tmp_path: Path):
    from ppa.synthetic.writer import write_synthetic_sysu

    root = tmp_path / "synthetic_sysu"
    write_synthetic_sysu(
        root,
        num_train_ids=3,
        num_val_ids=1,
        num_test_ids=2,
        images_per_camera=1,
        image_height=64,
        image_width=32,
        camera_coverage=0.85,
        seed=0,
    )
    gt = KeypointCache.load(root / "keypoints.npz")
    proc = run_script(
        sys.executable,
        root,
        "file",
        f"pose_backend.path={root / 'keypoints.npz'}",
        "dataset.keypoints=keypoints_extracted.npz",
    )
    assert proc.returncode == 0, proc.stderr
    out = KeypointCache.load(root / "keypoints_extracted.npz")
    assert sorted(out) == sorted(gt)  # preview.png at the root is not a dataset image
    for key in gt:
        np.testing.assert_array_equal(out[key], gt[key])
    report = _report(root, "keypoints_extracted.npz")
    assert sum(s["images"] for s in report["per_camera"].values()) == len(gt)
    assert set(report["per_camera"]) <= {f"cam{c}" for c in range(1, 7)}
