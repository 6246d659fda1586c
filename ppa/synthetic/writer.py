"""Synthetic SYSU-MM01 and RegDB datasets in their exact on-disk layouts.

Both writers render persons with :mod:`ppa.synthetic.renderer`, write the dataset's own
folder layout and split/index files, a keypoint cache with the ground-truth COCO-17 joints of
every image, a contact sheet (``preview.png``) and a manifest (``synthetic.json``) that records
the parameters. Output depends only on the arguments (same seed, same bytes): every identity,
shot and split draws from its own ``SeedSequence``. The dataset is written into a hidden sibling
folder and renamed into place at the end, so an interrupted run never leaves a half dataset at
``root``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ppa.data.keypoints import DEFAULT_CACHE_NAME, KeypointCache
from ppa.synthetic.cameras import REGDB_CAMERAS, SYSU_CAMERAS, VIEW_JITTER
from ppa.synthetic.files import (
    PREVIEW_IDENTITIES,
    PREVIEW_NAME,
    PREVIEW_SHOTS_REGDB,
    _contact_sheet,
    _save_image,
    _staged_directory,
    _write_manifest,
)
from ppa.synthetic.identity import Identity, sample_identity
from ppa.synthetic.palette import REGDB_LUMINANCE_SHARE, SYSU_LUMINANCE_SHARE
from ppa.synthetic.renderer import SyntheticRenderer
from ppa.synthetic.scene import CLUTTER_MAX

log = logging.getLogger(__name__)

KEYPOINT_SOURCE = "synthetic-ground-truth"

SYSU_VISIBLE_CAMS: tuple[int, ...] = (1, 2, 4, 5)
SYSU_INFRARED_CAMS: tuple[int, ...] = (3, 6)
SYSU_INDOOR_VISIBLE_CAMS: tuple[int, ...] = (1, 2)
SYSU_SPLIT_FILES = {"train": "train_id.txt", "val": "val_id.txt", "test": "test_id.txt"}
REGDB_TRIALS = 10
REGDB_FOLDERS = {1: ("Visible", "v", "visible"), 2: ("Thermal", "t", "thermal")}


# Stream tags keep SYSU and RegDB (and each use of randomness) independent for one seed.
_SYSU, _REGDB = 0x5E5E, 0x2E6D
_SPLIT, _COVERAGE, _IDENTITY, _SHOT, _TRIAL, _MODALITY = range(6)

Progress = Callable[[int, int], None]  # (images written, images in total)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_size(image_height: Any, image_width: Any) -> tuple[int, int]:
    return (
        _check_int("image_height", image_height, 32),
        _check_int("image_width", image_width, 16),
    )


def sysu_cameras_for(
    pid: int, test: bool, camera_coverage: float, rng: np.random.Generator
) -> tuple[int, ...]:
    """Cameras an identity appears in: each with probability `camera_coverage`, then fixed up
    so every identity has a visible and an infrared camera, and every test identity has an
    indoor gallery camera (1 or 2) and, when seen by cam 3, cam 1 (the SYSU protocol ignores
    cam 2 for cam 3 queries): every query then has a true match in both search modes."""
    cams = {c for c in range(1, 7) if rng.random() < camera_coverage}
    if not cams & set(SYSU_VISIBLE_CAMS):
        cams.add(int(rng.choice(SYSU_VISIBLE_CAMS)))
    if not cams & set(SYSU_INFRARED_CAMS):
        cams.add(int(rng.choice(SYSU_INFRARED_CAMS)))
    if test:
        if 3 in cams:
            cams.add(1)
        if not cams & set(SYSU_INDOOR_VISIBLE_CAMS):
            cams.add(int(rng.choice(SYSU_INDOOR_VISIBLE_CAMS)))
    return tuple(sorted(cams))


def write_synthetic_sysu(
    root: str | os.PathLike,
    *,
    num_train_ids: int,
    num_val_ids: int,
    num_test_ids: int,
    images_per_camera: int,
    image_height: int,
    image_width: int,
    camera_coverage: float,
    seed: int,
    infrared_luminance: float = SYSU_LUMINANCE_SHARE,
    view_jitter: float = VIEW_JITTER,
    clutter_max: int = CLUTTER_MAX,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write a synthetic SYSU-MM01 at `root`; returns the summary (also in the manifest).

    `infrared_luminance` is the share of a garment's infrared intensity that follows its
    visible brightness (SYSU's infrared cameras are near-infrared: high; 0 makes the thermal
    signature unrelated to visible colour). `view_jitter` (rad) spreads each shot's body yaw
    around the camera's view (pose and viewpoint variety); `clutter_max` is the most
    background objects per shot (background clutter). The recorded parameters hold the last
    two only when they differ from the defaults, so earlier manifests stay valid.

    Layout: ``cam{1..6}/{pid:04d}/{img:04d}.jpg`` and ``exp/{train,val,test}_id.txt`` (one
    line of comma-separated ids each), ``keypoints.npz``, ``preview.png``, ``synthetic.json``.
    Identity ids 1..N are shuffled into the splits, as in the real set.
    """
    n_train = _check_int("num_train_ids", num_train_ids, 1)
    n_val = _check_int("num_val_ids", num_val_ids, 1)  # the real exp/val_id.txt is never empty
    n_test = _check_int("num_test_ids", num_test_ids, 1)
    per_cam = _check_int("images_per_camera", images_per_camera, 1)
    height, width = _check_size(image_height, image_width)
    seed = _check_int("seed", seed, 0)
    if not isinstance(camera_coverage, (int, float)) or not 0.0 < camera_coverage <= 1.0:
        raise ValueError(f"camera_coverage must be in (0, 1], got {camera_coverage!r}")
    root = Path(root)
    parameters = {
        "num_train_ids": n_train,
        "num_val_ids": n_val,
        "num_test_ids": n_test,
        "images_per_camera": per_cam,
        "image_height": height,
        "image_width": width,
        "camera_coverage": float(camera_coverage),
        "seed": seed,
        "infrared_luminance": float(infrared_luminance),
    }
    if view_jitter != VIEW_JITTER:
        parameters["view_jitter"] = float(view_jitter)
    if clutter_max != CLUTTER_MAX:
        parameters["clutter_max"] = int(clutter_max)

    order = _rng(seed, _SYSU, _SPLIT).permutation(np.arange(1, n_train + n_val + n_test + 1))
    splits = {
        "train": sorted(int(p) for p in order[:n_train]),
        "val": sorted(int(p) for p in order[n_train : n_train + n_val]),
        "test": sorted(int(p) for p in order[n_train + n_val :]),
    }
    test_ids = set(splits["test"])
    cameras = {
        pid: sysu_cameras_for(
            pid, pid in test_ids, float(camera_coverage), _rng(seed, _SYSU, _COVERAGE, pid)
        )
        for pid in range(1, len(order) + 1)
    }
    total = per_cam * sum(len(c) for c in cameras.values())
    preview_ids = sorted(splits["test"], key=lambda p: (-len(cameras[p]), p))
    preview_ids = sorted(preview_ids[:PREVIEW_IDENTITIES])
    renderer = SyntheticRenderer(
        height, width, SYSU_CAMERAS, seed, view_jitter=view_jitter, clutter_max=clutter_max
    )
    cache = KeypointCache(source=KEYPOINT_SOURCE)
    per_camera = {f"cam{c}": 0 for c in SYSU_CAMERAS}
    ids_per_camera = {f"cam{c}": 0 for c in SYSU_CAMERAS}
    tiles: dict[tuple[int, int], np.ndarray] = {}

    with _staged_directory(root, overwrite) as staging:
        done = 0
        for pid in sorted(cameras):
            identity = sample_identity(
                pid, _rng(seed, _SYSU, _IDENTITY, pid), float(infrared_luminance)
            )
            for cam in cameras[pid]:
                ids_per_camera[f"cam{cam}"] += 1
                for shot in range(1, per_cam + 1):
                    out = renderer.render(identity, cam, _rng(seed, _SYSU, _SHOT, pid, cam, shot))
                    rel = f"cam{cam}/{pid:04d}/{shot:04d}.jpg"
                    _save_image(out.image, staging / rel, SYSU_CAMERAS[cam].jpeg_quality)
                    cache[rel] = out.keypoints
                    per_camera[f"cam{cam}"] += 1
                    if pid in preview_ids and shot == 1:
                        tiles[(pid, cam)] = out.image
                    done += 1
                    if progress is not None:
                        progress(done, total)
        (staging / "exp").mkdir()
        for split, name in SYSU_SPLIT_FILES.items():
            (staging / "exp" / name).write_text(",".join(str(p) for p in splits[split]))
        cache.save(staging / DEFAULT_CACHE_NAME)
        columns = [
            (f"cam{c} {'IR' if SYSU_CAMERAS[c].is_infrared else 'RGB'}", c)
            for c in sorted(SYSU_CAMERAS)
        ]
        _contact_sheet(staging / PREVIEW_NAME, preview_ids, columns, tiles, height, width)
        summary = {
            "dataset": "synthetic_sysu",
            "num_images": total,
            "num_ids": len(cameras),
            "images_per_camera": per_camera,
            "ids_per_camera": ids_per_camera,
            "ids": splits,
            "image_size": [height, width],
        }
        _write_manifest(staging, "synthetic_sysu", parameters, summary)
    log.info("wrote synthetic SYSU-MM01 (%d ids, %d images) to %s", len(cameras), total, root)
    return {**summary, "root": str(root)}


# --- RegDB --------------------------------------------------------------------------------
def regdb_trial_split(num_ids: int, trial: int, seed: int) -> tuple[list[int], list[int]]:
    """(train ids, test ids) of RegDB trial `trial`: a seeded random half of ids 1..num_ids."""
    order = _rng(seed, _REGDB, _TRIAL, trial).permutation(np.arange(1, num_ids + 1))
    half = num_ids // 2
    return sorted(int(p) for p in order[:half]), sorted(int(p) for p in order[half:])


def _regdb_name(identity: Identity, view: str, letter: str, serial: int, shot: int) -> str:
    gender = "female" if identity.female else "male"
    return f"{gender}_{view}_{letter}_{serial:05d}_{shot}.bmp"


def write_synthetic_regdb(
    root: str | os.PathLike,
    *,
    num_ids: int,
    images_per_modality: int,
    image_height: int,
    image_width: int,
    seed: int,
    infrared_luminance: float = REGDB_LUMINANCE_SHARE,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write a synthetic RegDB at `root`; returns the summary (also in the manifest).

    `infrared_luminance`: as for SYSU; RegDB's thermal camera follows visible brightness less.

    Layout: ``Visible/<id>/<name>.bmp`` and ``Thermal/<id>/<name>.bmp`` (a co-located camera
    pair: shot k of an identity has the same pose in both), and
    ``idx/{train,test}_{visible,thermal}_{t}.txt`` for t = 1..10, lines ``<path> <label>``
    with label = id - 1. Trial t trains on a seeded random half of the ids and tests on the
    rest.
    """
    n_ids = _check_int("num_ids", num_ids, 2)
    per_mod = _check_int("images_per_modality", images_per_modality, 1)
    height, width = _check_size(image_height, image_width)
    seed = _check_int("seed", seed, 0)
    root = Path(root)
    parameters = {
        "num_ids": n_ids,
        "images_per_modality": per_mod,
        "image_height": height,
        "image_width": width,
        "seed": seed,
        "infrared_luminance": float(infrared_luminance),
    }
    # One scene for both cameras: they are co-located and see the same street.
    renderer = SyntheticRenderer(height, width, REGDB_CAMERAS, seed, scene_keys={1: 0, 2: 0})
    cache = KeypointCache(source=KEYPOINT_SOURCE)
    files: dict[int, dict[int, list[str]]] = {cam: {} for cam in REGDB_FOLDERS}
    total = 2 * n_ids * per_mod
    preview_ids = list(range(1, min(n_ids, PREVIEW_IDENTITIES) + 1))
    tiles: dict[tuple[int, int], np.ndarray] = {}

    with _staged_directory(root, overwrite) as staging:
        done = 0
        for pid in range(1, n_ids + 1):
            identity = sample_identity(
                pid, _rng(seed, _REGDB, _IDENTITY, pid), float(infrared_luminance)
            )
            for shot in range(1, per_mod + 1):
                placement = renderer.placement(identity, 1, _rng(seed, _REGDB, _SHOT, pid, shot))
                serial = (pid - 1) * per_mod + shot
                for cam, (folder, letter, _) in REGDB_FOLDERS.items():
                    out = renderer.render(
                        identity,
                        cam,
                        _rng(seed, _REGDB, _MODALITY, pid, shot, cam),
                        placement=placement,
                    )
                    name = _regdb_name(identity, placement.view, letter, serial, shot)
                    rel = f"{folder}/{pid}/{name}"
                    _save_image(out.image, staging / rel, None)
                    cache[rel] = out.keypoints
                    files[cam].setdefault(pid, []).append(rel)
                    if pid in preview_ids and shot <= PREVIEW_SHOTS_REGDB:
                        tiles[(pid, (cam - 1) * PREVIEW_SHOTS_REGDB + shot)] = out.image
                    done += 1
                    if progress is not None:
                        progress(done, total)
        (staging / "idx").mkdir()
        trials = {}
        for trial in range(1, REGDB_TRIALS + 1):
            train, test = regdb_trial_split(n_ids, trial, seed)
            trials[str(trial)] = {"train": train, "test": test}
            for split, ids in (("train", train), ("test", test)):
                for cam, (_, _, modality) in REGDB_FOLDERS.items():
                    lines = [f"{rel} {pid - 1}" for pid in ids for rel in files[cam][pid]]
                    (staging / "idx" / f"{split}_{modality}_{trial}.txt").write_text(
                        "\n".join(lines) + "\n"
                    )
        cache.save(staging / DEFAULT_CACHE_NAME)
        columns = [
            (f"{REGDB_FOLDERS[cam][2]} {shot}", (cam - 1) * PREVIEW_SHOTS_REGDB + shot)
            for cam in REGDB_FOLDERS
            for shot in range(1, PREVIEW_SHOTS_REGDB + 1)
        ]
        _contact_sheet(staging / PREVIEW_NAME, preview_ids, columns, tiles, height, width)
        summary = {
            "dataset": "synthetic_regdb",
            "num_images": total,
            "num_ids": n_ids,
            "images_per_modality": {"visible": n_ids * per_mod, "thermal": n_ids * per_mod},
            "trials": trials,
            "image_size": [height, width],
        }
        _write_manifest(staging, "synthetic_regdb", parameters, summary)
    log.info("wrote synthetic RegDB (%d ids, %d images) to %s", n_ids, total, root)
    return {**summary, "root": str(root)}


# --- contact sheet ------------------------------------------------------------------------
