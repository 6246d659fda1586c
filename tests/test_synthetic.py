"""The synthetic SYSU-MM01 / RegDB writers: exact on-disk layouts, ground-truth keypoints,
determinism, atomic writes, the renderer's geometry, and scripts/make_synthetic.py."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ppa.cli.make_synthetic import _writer_settings
from ppa.config import load_config
from ppa.data.keypoints import KeypointCache
from ppa.data.records import Modality
from ppa.pose.coco import INDEX
from ppa.synthetic.body import ANKLE_HEIGHT
from ppa.synthetic.cameras import REGDB_CAMERAS, SYSU_CAMERAS, VIEW_JITTER, Placement
from ppa.synthetic.files import MANIFEST_NAME, PREVIEW_NAME, read_manifest
from ppa.synthetic.identity import sample_identity
from ppa.synthetic.palette import OCCLUDED_SCORE, SYSU_LUMINANCE_SHARE, VISIBLE_SCORE, garment_heat
from ppa.synthetic.person import rasterize_person
from ppa.synthetic.renderer import SyntheticRenderer
from ppa.synthetic.scene import CLUTTER_MAX
from ppa.synthetic.writer import (
    KEYPOINT_SOURCE,
    regdb_trial_split,
    sysu_cameras_for,
    write_synthetic_regdb,
    write_synthetic_sysu,
)

REPO = Path(__file__).resolve().parent.parent
H, W = 64, 32
SYSU_ARGS = dict(
    num_train_ids=4,
    num_val_ids=1,
    num_test_ids=3,
    images_per_camera=2,
    image_height=H,
    image_width=W,
    camera_coverage=0.5,
    seed=3,
)
REGDB_ARGS = dict(num_ids=6, images_per_modality=2, image_height=H, image_width=W, seed=5)
SYSU_FILE = re.compile(r"^cam([1-6])/(\d{4})/(\d{4})\.jpg$")
REGDB_FILE = re.compile(
    r"^(Visible|Thermal)/([1-9]\d*)/(male|female)_(front|back)_([vt])_"
    r"(\d{5})_(\d+)\.bmp$"
)


def _files(root: Path, suffix: str) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(f"*{suffix}"))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def sysu(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sysu") / "SYSU"
    return root, write_synthetic_sysu(root, **SYSU_ARGS)


@pytest.fixture(scope="module")
def regdb(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("regdb") / "RegDB"
    return root, write_synthetic_regdb(root, **REGDB_ARGS)


# --- SYSU-MM01 ----------------------------------------------------------------------------
def test_sysu_split_files_are_one_line_of_disjoint_ids(sysu):
    root, summary = sysu
    splits = {}
    for split in ("train", "val", "test"):
        text = (root / "exp" / f"{split}_id.txt").read_text()
        assert re.fullmatch(r"\d+(,\d+)*", text), f"{split}_id.txt is not one line of ids"
        splits[split] = [int(t) for t in text.split(",")]
        assert splits[split] == sorted(splits[split]) == summary["ids"][split]
    assert [len(splits[s]) for s in ("train", "val", "test")] == [4, 1, 3]
    all_ids = splits["train"] + splits["val"] + splits["test"]
    assert sorted(all_ids) == list(range(1, 9))  # disjoint and complete


def test_sysu_layout_matches_the_real_dataset(sysu):
    root, summary = sysu
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [f"cam{c}" for c in range(1, 7)] + ["exp", "keypoints.npz", PREVIEW_NAME, MANIFEST_NAME]
    )
    images = _files(root, ".jpg")
    assert all(SYSU_FILE.match(p) for p in images)
    per_folder: dict[tuple[int, int], list[int]] = {}
    for p in images:
        cam, pid, img = map(int, SYSU_FILE.match(p).groups())
        per_folder.setdefault((cam, pid), []).append(img)
    # every (camera, identity) folder holds images 0001..images_per_camera
    assert all(sorted(v) == [1, 2] for v in per_folder.values())
    for cam in range(1, 7):
        n = sum(len(v) for (c, _), v in per_folder.items() if c == cam)
        assert summary["images_per_camera"][f"cam{cam}"] == n
    assert summary["num_images"] == len(images)
    with Image.open(root / images[0]) as img:
        assert (img.format, img.size, img.mode) == ("JPEG", (W, H), "RGB")


def test_sysu_every_identity_is_seen_in_both_modalities_and_tests_have_galleries(sysu):
    root, summary = sysu
    cams_of: dict[int, set[int]] = {}
    for p in _files(root, ".jpg"):
        cam, pid, _ = map(int, SYSU_FILE.match(p).groups())
        cams_of.setdefault(pid, set()).add(cam)
    assert sorted(cams_of) == list(range(1, 9))
    for pid, cams in cams_of.items():
        assert cams & {1, 2, 4, 5} and cams & {3, 6}, f"id {pid} seen only by {cams}"
    for pid in summary["ids"]["test"]:
        assert cams_of[pid] & {1, 2}, f"test id {pid} has no indoor gallery"
        if 3 in cams_of[pid]:
            assert 1 in cams_of[pid], f"test id {pid}: cam 3 queries need a cam 1 gallery"


def test_sysu_camera_rules_hold_for_any_draw():
    for k in range(200):
        rng = np.random.default_rng(k)
        test = k % 2 == 0
        cams = set(sysu_cameras_for(k, test, 0.3, rng))
        assert cams & {1, 2, 4, 5} and cams & {3, 6}
        if test:
            assert cams & {1, 2}
            assert 3 not in cams or 1 in cams
    # coverage -> 0: exactly one visible and one infrared camera
    cams = sysu_cameras_for(1, False, 1e-12, np.random.default_rng(0))
    assert len(cams) == 2 and cams[0] in (1, 2, 4, 5) and cams[1] in (3, 6)
    assert sysu_cameras_for(1, True, 1.0, np.random.default_rng(0)) == (1, 2, 3, 4, 5, 6)


def test_sysu_keypoint_cache_has_every_image(sysu):
    root, _ = sysu
    cache = KeypointCache.load(root / "keypoints.npz")
    assert cache.source == KEYPOINT_SOURCE
    assert sorted(cache) == _files(root, ".jpg")
    for path in cache:
        kp = cache[path]
        assert kp.shape == (17, 3)
        assert set(np.unique(kp[:, 2])) <= {0.0, OCCLUDED_SCORE, VISIBLE_SCORE}
        seen = kp[kp[:, 2] > 0]
        assert np.all((seen[:, 0] >= 0) & (seen[:, 0] <= W - 1))
        assert np.all((seen[:, 1] >= 0) & (seen[:, 1] <= H - 1))
        assert (kp[:, 2] == VISIBLE_SCORE).sum() >= 6, f"{path}: hardly any joint seen"


def test_sysu_infrared_frames_are_gray_and_visible_frames_coloured(sysu):
    root, _ = sysu
    for p in _files(root, ".jpg"):
        cam = int(SYSU_FILE.match(p).group(1))
        img = _rgb(root / p)
        chroma = np.abs(img[..., 0] - img[..., 1]) + np.abs(img[..., 1] - img[..., 2])
        if SYSU_CAMERAS[cam].modality is Modality.INFRARED:
            assert chroma.max() == 0, f"{p}: infrared frame has colour"
        else:
            assert chroma.mean() > 8, f"{p}: visible frame is (nearly) gray"


def test_sysu_is_deterministic_for_a_seed(sysu, tmp_path):
    root, _ = sysu
    again = tmp_path / "again"
    write_synthetic_sysu(again, **SYSU_ARGS)
    assert _tree_bytes(again) == _tree_bytes(root)
    other = tmp_path / "other"
    write_synthetic_sysu(other, **{**SYSU_ARGS, "seed": SYSU_ARGS["seed"] + 1})
    a, b = _tree_bytes(root), _tree_bytes(other)
    common = sorted(set(a) & set(b) - {MANIFEST_NAME})
    assert [p for p in common if p.endswith(".jpg") and a[p] == b[p]] == []
    assert a[MANIFEST_NAME] != b[MANIFEST_NAME]


def test_sysu_manifest_records_parameters(sysu):
    root, summary = sysu
    manifest = read_manifest(root)
    assert manifest["dataset"] == "synthetic_sysu"
    assert manifest["parameters"] == {**SYSU_ARGS, "infrared_luminance": SYSU_LUMINANCE_SHARE}
    assert manifest["summary"]["ids"] == summary["ids"]
    with Image.open(root / PREVIEW_NAME) as sheet:
        assert sheet.format == "PNG" and sheet.width > 6 * W and sheet.height > H


# --- RegDB --------------------------------------------------------------------------------
def test_regdb_layout_and_pairs(regdb):
    root, summary = regdb
    images = _files(root, ".bmp")
    assert len(images) == 2 * 6 * 2 == summary["num_images"]
    pairs: dict[tuple[str, str, str, str], str] = {}
    for p in images:
        m = REGDB_FILE.match(p)
        assert m, p
        folder, pid, _, view, letter, serial, shot = m.groups()
        assert letter == ("v" if folder == "Visible" else "t")
        # the two frames of a shot share identity, view, serial number and shot index
        key = (pid, view, serial, shot)
        pairs[key] = pairs.get(key, "") + letter
        with Image.open(root / p) as img:
            assert (img.format, img.size) == ("BMP", (W, H))
    # each shot exists in both modalities (a co-located camera pair), 2 shots per identity
    assert sorted(pairs.values()) == ["tv"] * 12
    for pid in range(1, 7):
        assert len(list((root / "Visible" / str(pid)).iterdir())) == 2
        assert len(list((root / "Thermal" / str(pid)).iterdir())) == 2


def test_regdb_index_files_split_each_trial_in_halves(regdb):
    root, summary = regdb
    idx = root / "idx"
    assert sorted(p.name for p in idx.iterdir()) == sorted(
        f"{s}_{m}_{t}.txt"
        for s in ("train", "test")
        for m in ("visible", "thermal")
        for t in range(1, 11)
    )
    splits = set()
    for t in range(1, 11):
        ids = {}
        for split in ("train", "test"):
            per_mod = {}
            for modality, folder in (("visible", "Visible"), ("thermal", "Thermal")):
                lines = (idx / f"{split}_{modality}_{t}.txt").read_text().splitlines()
                labels = set()
                for line in lines:
                    path, label = line.split(" ")
                    assert path.startswith(folder + "/") and (root / path).is_file()
                    assert int(label) == int(path.split("/")[1]) - 1  # label = id - 1
                    labels.add(int(label) + 1)
                assert len(lines) == 2 * len(labels)
                per_mod[modality] = labels
            assert per_mod["visible"] == per_mod["thermal"]
            ids[split] = per_mod["visible"]
        assert len(ids["train"]) == len(ids["test"]) == 3
        assert not ids["train"] & ids["test"] and ids["train"] | ids["test"] == set(range(1, 7))
        assert sorted(ids["train"]) == summary["trials"][str(t)]["train"]
        splits.add(tuple(sorted(ids["train"])))
    assert len(splits) > 1  # the trials are different random halves


def test_regdb_trial_split_odd_count_and_seeded():
    train, test = regdb_trial_split(7, 1, seed=0)
    assert len(train) == 3 and len(test) == 4 and sorted(train + test) == list(range(1, 8))
    assert regdb_trial_split(7, 1, seed=0) == (train, test)


def test_regdb_keypoints_and_modalities(regdb):
    root, _ = regdb
    cache = KeypointCache.load(root / "keypoints.npz")
    assert cache.source == KEYPOINT_SOURCE and sorted(cache) == _files(root, ".bmp")
    for p in _files(root, ".bmp"):
        img = _rgb(root / p)
        gray = np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
        assert gray == p.startswith("Thermal/"), p
    # a pair shares its pose: identical ground-truth keypoints in both modalities
    vis = sorted(p for p in cache if p.startswith("Visible/1/"))
    thr = sorted(p for p in cache if p.startswith("Thermal/1/"))
    for v, t in zip(vis, thr, strict=True):
        np.testing.assert_array_equal(cache[v], cache[t])


def test_regdb_is_deterministic(regdb, tmp_path):
    root, _ = regdb
    again = tmp_path / "again"
    write_synthetic_regdb(again, **REGDB_ARGS)
    assert _tree_bytes(again) == _tree_bytes(root)


# --- atomic writes and argument checks -----------------------------------------------------
def test_interrupted_write_leaves_nothing_behind(tmp_path):
    root = tmp_path / "data" / "synthetic_sysu"

    def stop_after_three(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_synthetic_sysu(root, **SYSU_ARGS, progress=stop_after_three)
    assert not root.exists()
    assert list(root.parent.iterdir()) == []  # no staging folder left over


def test_existing_roots_are_kept_unless_replaceable(tmp_path):
    root = tmp_path / "RegDB"
    root.mkdir()
    (root / "keep.txt").write_text("real data")
    with pytest.raises(FileExistsError, match="already exists"):
        write_synthetic_regdb(root, **REGDB_ARGS)
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        write_synthetic_regdb(root, **REGDB_ARGS, overwrite=True)
    assert (root / "keep.txt").read_text() == "real data"

    fresh = tmp_path / "fresh"
    write_synthetic_regdb(fresh, **REGDB_ARGS)
    write_synthetic_regdb(fresh, **{**REGDB_ARGS, "seed": 9}, overwrite=True)
    assert read_manifest(fresh)["parameters"]["seed"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RegDB", "fresh"]


@pytest.mark.parametrize(
    "change, key",
    [
        ({"num_test_ids": 0}, "num_test_ids"),
        ({"num_val_ids": 0}, "num_val_ids"),
        ({"camera_coverage": 0.0}, "camera_coverage"),
        ({"image_height": 8}, "image_height"),
        ({"images_per_camera": 1.5}, "images_per_camera"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_name_the_parameter(tmp_path, change, key):
    with pytest.raises(ValueError, match=key):
        write_synthetic_sysu(tmp_path / "x", **{**SYSU_ARGS, **change})
    assert not (tmp_path / "x").exists()


# --- renderer -----------------------------------------------------------------------------
def _plain_identity(pid: int = 7):
    """An identity without carried objects or long hair, so nothing hides a joint."""
    ident = sample_identity(pid, np.random.default_rng(pid))
    return dataclasses.replace(
        ident, carry="none", hair_style="short", coat=False, skirt=0.0, hem=0.0
    )


def _placement(yaw: float, foot_y: float = 120.0) -> Placement:
    return Placement(
        yaw=yaw,
        head_turn=0.0,
        phase=0.0,
        motion=0.0,
        height_px=110.0,
        center_x=32.0,
        foot_y=foot_y,
        scene_x=0.5,
        detail_seed=1,
    )


def test_front_view_geometry_matches_the_body_model():
    ident = _plain_identity()
    layers = rasterize_person(ident, _placement(0.0), 128, 64)
    kp = {name: layers.keypoints[i] for name, i in INDEX.items()}
    assert np.all(layers.keypoints[:, 2] == VISIBLE_SCORE)  # facing us, nothing in the way
    assert kp["nose"][0] == pytest.approx(32.0, abs=1e-4)
    # the person's left is on the image right when they face the camera
    assert kp["left_shoulder"][0] == pytest.approx(
        32.0 + 110.0 * ident.shoulder_width / 2, abs=1e-3
    )
    assert kp["right_hip"][0] == pytest.approx(32.0 - 110.0 * ident.hip_width / 2, abs=1e-3)
    # standing still: both ankles rest at ankle height above the soles
    for side in ("left", "right"):
        assert kp[f"{side}_ankle"][1] == pytest.approx(120.0 - 110.0 * ANKLE_HEIGHT, abs=1e-3)
    assert kp["nose"][1] < kp["left_shoulder"][1] < kp["left_hip"][1] < kp["left_knee"][1]


def test_back_and_side_views_hide_the_right_joints():
    ident = _plain_identity()
    back = rasterize_person(ident, _placement(math.pi), 128, 64).keypoints
    for name in ("nose", "left_eye", "right_eye"):
        assert back[INDEX[name], 2] == 0.0
    assert back[INDEX["left_shoulder"], 0] < 32.0  # seen from behind, left is on the left
    # yaw +90 degrees shows the person's right side: the left side is turned away
    side = rasterize_person(ident, _placement(math.pi / 2), 128, 64).keypoints
    assert side[INDEX["left_ear"], 2] == 0.0 and side[INDEX["left_eye"], 2] == 0.0
    assert side[INDEX["right_eye"], 2] == VISIBLE_SCORE
    assert side[INDEX["left_shoulder"], 2] == OCCLUDED_SCORE
    assert side[INDEX["right_shoulder"], 2] == VISIBLE_SCORE


def test_out_of_frame_and_occluded_joints():
    ident = _plain_identity()
    cut = rasterize_person(ident, _placement(0.0, foot_y=140.0), 128, 64).keypoints
    for name in ("left_ankle", "right_ankle"):
        assert cut[INDEX[name], 1] > 127 and cut[INDEX[name], 2] == 0.0
    # a pillar over the lower half of the crop hides knees and ankles but not the head
    hidden = rasterize_person(ident, _placement(0.0), 128, 64, occluder=(0, 64, 80, 128))
    for name in ("left_knee", "right_knee", "left_ankle", "right_ankle"):
        assert hidden.keypoints[INDEX[name], 2] == OCCLUDED_SCORE
    assert hidden.keypoints[INDEX["nose"], 2] == VISIBLE_SCORE
    assert not hidden.alpha[80:].any()


@pytest.mark.parametrize("cameras", [SYSU_CAMERAS, REGDB_CAMERAS])
def test_confident_keypoints_land_on_the_drawn_person(cameras):
    renderer = SyntheticRenderer(128, 64, cameras, seed=0)
    checked = 0
    for pid in range(1, 9):
        ident = sample_identity(pid, np.random.default_rng(pid))
        for cam in cameras:
            out = renderer.render(
                ident, cam, np.random.default_rng([pid, cam]), with_background=True
            )
            assert out.image.shape[:2] == out.background.shape[:2] == (128, 64)
            diff = np.abs(out.image.astype(np.int16) - out.background.astype(np.int16))
            diff = diff if diff.ndim == 2 else diff.max(axis=2)
            for x, y, score in out.keypoints:
                if score != VISIBLE_SCORE:
                    continue
                r, c = round(y), round(x)
                # joints on the silhouette (ears, a nose in profile) may round onto the rim
                near = out.person_mask[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
                assert near.any(), f"id {pid} cam {cam}: joint off the person"
                checked += 1
            confident = out.keypoints[:, 2] == VISIBLE_SCORE
            rows = np.round(out.keypoints[confident, 1]).astype(int)
            cols = np.round(out.keypoints[confident, 0]).astype(int)
            # the person changes the picture where the joints are (colour or heat differs)
            assert np.median(diff[rows, cols]) > 15, f"id {pid} cam {cam}: person invisible"
    assert checked > 8 * len(cameras) * 10


def test_regdb_pairs_share_pose_clutter_and_occluders():
    renderer = SyntheticRenderer(64, 32, REGDB_CAMERAS, seed=0, scene_keys={1: 0, 2: 0})
    ident = sample_identity(2, np.random.default_rng(2))
    occluded = 0
    for shot in range(60):
        place = renderer.placement(ident, 1, np.random.default_rng(shot))
        vis = renderer.render(ident, 1, np.random.default_rng([shot, 1]), placement=place)
        ir = renderer.render(ident, 2, np.random.default_rng([shot, 2]), placement=place)
        np.testing.assert_array_equal(vis.person_mask, ir.person_mask)
        np.testing.assert_array_equal(vis.keypoints, ir.keypoints)
        occluded += int((vis.keypoints[:, 2] == OCCLUDED_SCORE).any())
    assert occluded > 0  # the comparison covered shots with something in front of the person


def test_identity_is_fixed_and_modalities_look_different():
    a = sample_identity(3, np.random.default_rng(11))
    b = sample_identity(3, np.random.default_rng(11))
    assert a.top_pattern == b.top_pattern and np.array_equal(a.colours, b.colours)
    renderer = SyntheticRenderer(128, 64, SYSU_CAMERAS, seed=0)
    place = renderer.placement(a, 1, np.random.default_rng(0))
    visible = renderer.render(a, 1, np.random.default_rng(1), placement=place)
    infrared = renderer.render(a, 3, np.random.default_rng(1), placement=place)
    assert visible.image.shape == (128, 64, 3) and infrared.image.shape == (128, 64)
    np.testing.assert_array_equal(visible.keypoints, infrared.keypoints)
    # exposed skin is the hottest thing on a person in infrared
    skin = infrared.image[visible.person_mask].max()
    assert skin > np.percentile(infrared.image[~infrared.person_mask], 90)


# --- scripts/make_synthetic.py -------------------------------------------------------------
def _run_script(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "make_synthetic.py"),
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "hydra.output_subdir=null",
        *overrides,
    ]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_script_writes_once_then_skips_until_forced(tmp_path):
    root = tmp_path / "data" / "regdb"
    args = (
        "dataset=synthetic_regdb",
        f"dataset.root={root}",
        "dataset.synthetic.num_ids=2",
        "dataset.synthetic.images_per_modality=1",
        f"dataset.synthetic.image_height={H}",
        f"dataset.synthetic.image_width={W}",
    )
    first = _run_script(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    assert read_manifest(root)["parameters"]["num_ids"] == 2
    assert len(_files(root, ".bmp")) == 4
    assert "wrote synthetic_regdb: 4 images of 2 identities" in first.stdout + first.stderr

    (root / "marker").write_text("kept")
    second = _run_script(tmp_path, *args)
    assert second.returncode == 0, second.stderr
    assert "already present" in second.stdout + second.stderr
    assert (root / "marker").exists()

    third = _run_script(tmp_path, *args, "dataset.synthetic.seed=4")
    assert third.returncode == 0 and "+force=true" in third.stdout + third.stderr
    assert (root / "marker").exists()

    # a dataset from an older renderer is reported, not silently reused or replaced
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    manifest["renderer_version"] = -1
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    stale = _run_script(tmp_path, *args, "dataset.synthetic.seed=4")
    assert stale.returncode == 0 and "renderer version -1" in stale.stdout + stale.stderr
    assert (root / "marker").exists()

    forced = _run_script(tmp_path, *args, "dataset.synthetic.seed=4", "+force=true")
    assert forced.returncode == 0, forced.stderr
    assert not (root / "marker").exists()
    assert read_manifest(root)["parameters"]["seed"] == 4


# The SYSU-layout sets recipes are validated on (configs/dataset/).
VALIDATION_SETS = (
    "synthetic_sysu",
    "synthetic_sysu_alt",
    "synthetic_sysu_third",
    "synthetic_sysu_fourth",
)
# Writer settings that change what is drawn (not only which random draws).
DRAWN = ("infrared_luminance", "camera_coverage", "view_jitter", "clutter_max", "image_height")


def _drawn_settings(name: str) -> dict[str, float]:
    writer, kwargs = _writer_settings(load_config([f"dataset={name}"]))
    assert writer is write_synthetic_sysu
    defaults = {"view_jitter": VIEW_JITTER, "clutter_max": CLUTTER_MAX}
    return {key: kwargs.get(key, defaults.get(key)) for key in DRAWN}


def test_validation_sets_are_writable_and_differ_in_what_is_drawn():
    """Each validation set's config is one the writer takes, and any two of them differ in a
    setting that changes the pictures; the third and fourth turn the knobs the first two leave
    at the writer's defaults, and the fourth draws infrared with no trace of visible colour."""
    drawn = {name: _drawn_settings(name) for name in VALIDATION_SETS}
    for i, a in enumerate(VALIDATION_SETS):
        for b in VALIDATION_SETS[i + 1 :]:
            assert drawn[a] != drawn[b], (a, b)
    for name in VALIDATION_SETS[:2]:
        assert drawn[name]["view_jitter"] == VIEW_JITTER
        assert drawn[name]["clutter_max"] == CLUTTER_MAX
    third = drawn["synthetic_sysu_third"]
    assert third["view_jitter"] > VIEW_JITTER and third["clutter_max"] > CLUTTER_MAX
    assert third["image_height"] != drawn["synthetic_sysu"]["image_height"]
    fourth = drawn["synthetic_sysu_fourth"]
    assert fourth["view_jitter"] > VIEW_JITTER and fourth["clutter_max"] > CLUTTER_MAX
    assert fourth["image_height"] not in {drawn[n]["image_height"] for n in VALIDATION_SETS[:3]}
    assert fourth["infrared_luminance"] == 0.0


def test_script_refuses_a_real_dataset(tmp_path):
    result = _run_script(tmp_path, "dataset=sysu", f"dataset.root={tmp_path / 'sysu'}")
    assert result.returncode != 0
    assert "dataset=sysu is not a synthetic dataset" in result.stderr
    assert not (tmp_path / "sysu").exists()


def test_infrared_luminance_share_controls_how_much_brightness_reaches_infrared():
    luminance_only = garment_heat(1.0)
    fabric_only = garment_heat(0.0)
    # Full share: infrared intensity is monotone in visible brightness; none: it is not.
    from ppa.synthetic.palette import GARMENT_COLOURS

    luma = GARMENT_COLOURS @ np.array([0.3, 0.59, 0.11], np.float32)
    order = np.argsort(luma)
    assert np.all(np.diff(luminance_only[order]) >= 0)
    assert not np.all(np.diff(fabric_only[order]) >= 0)
    np.testing.assert_allclose(
        garment_heat(0.5), 0.5 * luminance_only + 0.5 * fabric_only, rtol=1e-6
    )
    with pytest.raises(ValueError, match="share"):
        garment_heat(1.5)


def test_writer_knobs_change_what_is_drawn(tmp_path):
    """view_jitter and clutter_max change the pictures, not only the seed; the defaults
    reproduce the default writer exactly and are left out of the manifest."""
    import cv2

    common = dict(
        num_train_ids=2,
        num_val_ids=1,
        num_test_ids=1,
        images_per_camera=1,
        image_height=64,
        image_width=32,
        camera_coverage=1.0,
        seed=4,
    )
    write_synthetic_sysu(tmp_path / "default", **common)
    write_synthetic_sysu(tmp_path / "same", **common, view_jitter=0.28, clutter_max=2)
    write_synthetic_sysu(tmp_path / "knobs", **common, view_jitter=0.9, clutter_max=6)
    rel = "cam1/0001/0001.jpg"

    def image(name):
        return cv2.imread(str(tmp_path / name / rel))

    assert (image("default") == image("same")).all()
    assert not (image("default") == image("knobs")).all()
    assert "view_jitter" not in read_manifest(tmp_path / "default")["parameters"]
    params = read_manifest(tmp_path / "knobs")["parameters"]
    assert params["view_jitter"] == 0.9 and params["clutter_max"] == 6
    with pytest.raises(ValueError, match="view_jitter and clutter_max"):
        write_synthetic_sysu(tmp_path / "bad", **common, clutter_max=-1)
