"""scripts/privacy_report.py on the tiny synthetic set, the packaged portraits and a photo folder,
with a checkpoint trained by scripts/train_central.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image
from skimage import data as skimage_data

from ppa.cli.train import train
from ppa.config import load_config
from ppa.data.errors import CorruptImageError
from ppa.data.keypoints import KeypointCache
from ppa.pose.coco import INDEX, NUM_KEYPOINTS
from ppa.privacy_report import run as privacy_report
from ppa.privacy_report.photos import SAMPLE_PHOTO_JOINTS
from ppa.privacy_report.settings import AnonymizerSetting

from conftest import REPO, tiny_overrides

ASTRONAUT_HEAD = SAMPLE_PHOTO_JOINTS["astronaut"]


def strict_json(path: Path) -> dict:
    """The report must be strict JSON: no NaN / Infinity literals."""

    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def report_cfg(root: Path, tmp: Path, *overrides: str, **report) -> DictConfig:
    """The run config with `privacy_report` keys set."""
    cfg = load_config(tiny_overrides(root, tmp, *overrides))
    with open_dict(cfg):
        cfg.privacy_report = OmegaConf.merge(cfg.privacy_report, report)
    return cfg


@pytest.fixture(scope="module")
def trained(tiny_sysu_root: Path, tmp_path_factory) -> dict[str, Path]:
    """A tiny PPA model (mosaic, pose-guided) after 1 and 2 short epochs."""
    out = tmp_path_factory.mktemp("trained")
    cfg = load_config(
        tiny_overrides(
            tiny_sysu_root,
            out,
            "train.epochs=2",
            "train.max_batches_per_epoch=2",
            "train.checkpoint_every=1",
        )
    )
    last = train(cfg)
    return {"last": last, "epoch1": last.parent / "epoch_0001.pt"}


def rows_by_label(report: dict) -> dict[str, dict]:
    return {row["label"]: row for row in report["rows"]}


@pytest.mark.slow
def test_command_line_writes_the_table_json_plot_and_grids(
    tiny_sysu_root: Path, tmp_path: Path, trained
) -> None:
    env = dict(os.environ, PPA_WORKDIR=str(REPO), OMP_NUM_THREADS="1")
    overrides = tiny_overrides(tiny_sysu_root, tmp_path, f"checkpoint={trained['last']}")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "privacy_report.py"), *overrides],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    path = Path(lines[-1])
    assert path == tmp_path / "out" / "privacy_report" / "privacy_report.json"
    report = strict_json(path)
    for key in ("markdown", "plot", "samples", "photos"):
        assert Path(report["files"][key]).is_file(), key
    for key in ("plot", "samples", "photos"):
        with Image.open(report["files"][key]) as image:
            assert image.format == "PNG" and min(image.size) > 100
    # The configured anonymisers at their configured strengths, pose-guided and whole-image.
    rows = rows_by_label(report)
    assert list(rows) == [
        "mosaic 24 KPR",
        "mosaic 24 whole",
        "blur 12 KPR",
        "blur 12 whole",
        "noise 0.5 KPR",
        "noise 0.5 whole",
    ]
    table = Path(report["files"]["markdown"]).read_text()
    assert any(line.startswith("| setting | head PSNR") for line in lines)  # printed
    for label, row in rows.items():
        assert f"| {label} |" in table
        assert row["trained_with"]["anonymizer"] == "mosaic"
        for protocol in ("anon-anon", "raw-anon"):
            numbers = row["utility"][protocol]["all"]
            assert 0.0 <= numbers["rank1"] <= 1.0 and 0.0 < numbers["mAP"] <= 1.0
        assert row["dataset"]["num_images"] == report["dataset"]["images"] > 0
        assert row["dataset"]["head_ssim"] < 1.0 and row["dataset"]["image_psnr"] < 60
    ((ckpt, reference),) = report["reference"].items()
    assert ckpt == str(trained["last"]) and 0.0 < reference["raw-raw"]["all"]["mAP"] <= 1.0
    # Real portraits: the faces are found before and hidden by the mosaic on the head after.
    assert [p["name"] for p in report["photos"]] == ["astronaut", "grace_hopper"]
    for photo in rows["mosaic 24 KPR"]["photos"]["per_photo"]:
        assert photo["face_on_head_raw"] and not photo["face_on_head_anon"], photo
    assert "2/2 → 0/2" in table
    assert "no Haar cascade" in report["face_detector"]["note"]


def test_numbers_are_consistent_and_per_setting_checkpoints_are_used(
    tiny_sysu_root: Path, tmp_path: Path, trained
) -> None:
    settings = [
        {"anonymizer": "mosaic", "pose_guided": True},
        {"anonymizer": "mosaic", "pose_guided": False},
        {"anonymizer": "mosaic", "pose_guided": True, "strength": 4, "label": "weak mosaic"},
        {"anonymizer": "blur", "pose_guided": True, "checkpoint": str(trained["epoch1"])},
        {"anonymizer": "blur", "pose_guided": False, "checkpoint": str(trained["epoch1"])},
        {
            "anonymizer": "blur",
            "pose_guided": True,
            "strength": 2,
            "levels": {"strong": 1.0},
            "label": "weak blur",
        },
    ]
    cfg = report_cfg(
        tiny_sysu_root, tmp_path, f"checkpoint={trained['last']}", settings=settings, grid_samples=4
    )
    report = strict_json(privacy_report.run(cfg))
    rows = rows_by_label(report)
    assert rows["weak blur"]["levels"] == {"strong": 1.0, "medium": 1.0, "weak": 0.35}
    for strong, weak in (("mosaic 24 KPR", "weak mosaic"), ("blur 12 KPR", "weak blur")):
        for where in ("dataset", "photos"):
            assert rows[strong][where]["head_ssim"] < rows[weak][where]["head_ssim"], where
            assert rows[strong][where]["head_psnr"] < rows[weak][where]["head_psnr"], where
    for name, strength in (("mosaic", 24), ("blur", 12)):
        kpr, whole = rows[f"{name} {strength} KPR"], rows[f"{name} {strength} whole"]
        # KPR keeps the body structure along the skeleton and hides the head harder than
        # the whole-image anonymiser (strong on the head, weak on the skeleton).
        assert kpr["dataset"]["skeleton_ssim"] > whole["dataset"]["skeleton_ssim"] + 0.1
        assert kpr["dataset"]["head_ssim"] < whole["dataset"]["head_ssim"]
        assert kpr["dataset"]["head_psnr"] < kpr["dataset"]["image_psnr"]
    # Two checkpoints: each gets its own raw-raw reference, each setting its own model.
    assert set(report["reference"]) == {str(trained["last"]), str(trained["epoch1"])}
    assert rows["blur 12 KPR"]["trained_with"]["epochs"] == 1
    assert rows["mosaic 24 KPR"]["trained_with"]["epochs"] == 2
    last, first = (
        report["reference"][str(trained[k])]["raw-raw"]["all"] for k in ("last", "epoch1")
    )
    assert last != first
    markdown = Path(report["files"]["markdown"]).read_text()
    assert markdown.count("raw-raw reference of") == 2


def write_photo_folder(folder: Path) -> dict[str, str]:
    """Two crops of the astronaut (one with cached keypoints, one without) and a broken file."""
    folder.mkdir()
    image = skimage_data.astronaut()
    Image.fromarray(image).save(folder / "cached.jpg", quality=95)
    Image.fromarray(image[:, 40:480]).save(folder / "no_entry.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    points = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    for joint, (x, y) in ASTRONAUT_HEAD.items():
        points[INDEX[joint]] = (x, y, 0.8)
    KeypointCache({"cached.jpg": points}, source="test").save(folder / "kp.npz")
    return {"cached.jpg": "cache", "no_entry.png": "prior"}


def test_photo_folder_uses_its_keypoint_cache_else_the_prior(
    tiny_sysu_root: Path, tmp_path: Path, caplog
) -> None:
    expected = write_photo_folder(tmp_path / "photos")
    common = {
        "photos": str(tmp_path / "photos"),
        "photos_keypoints": "kp.npz",
        "sample_photos": False,
        "utility": False,
        "images": 0,
        "settings": [{"anonymizer": "mosaic", "pose_guided": True}],
    }
    with pytest.raises(CorruptImageError, match=r"broken\.jpg"):
        privacy_report.run(report_cfg(tiny_sysu_root, tmp_path, **common))
    cfg = report_cfg(tiny_sysu_root, tmp_path, "dataset.on_bad_image=skip", **common)
    report = strict_json(privacy_report.run(cfg))
    assert {p["name"]: p["keypoints"] for p in report["photos"]} == expected
    assert "no keypoints" in caplog.text and "no_entry.png" in caplog.text
    (row,) = report["rows"]
    assert "dataset" not in row and "utility" not in row
    per_photo = {p["photo"]: p for p in row["photos"]["per_photo"]}
    cached = per_photo["cached.jpg"]
    assert cached["face_on_head_raw"] and not cached["face_on_head_anon"]
    assert Path(report["files"]["photos"]).is_file() and "samples" not in report["files"]
    assert math.isfinite(row["photos"]["head_ssim"])


def test_bad_report_settings_are_named(tiny_sysu_root: Path, tmp_path: Path, trained) -> None:
    with pytest.raises(ValueError, match=r"settings\[0\]: anonymizer='pixelate' is not one of"):
        privacy_report.run(
            report_cfg(tiny_sysu_root, tmp_path, settings=[{"anonymizer": "pixelate"}])
        )
    with pytest.raises(ValueError, match=r"settings\[0\]: unknown key\(s\) \['strenght'\]"):
        privacy_report.run(
            report_cfg(tiny_sysu_root, tmp_path, settings=[{"anonymizer": "blur", "strenght": 3}])
        )
    with pytest.raises(ValueError, match=r"checkpoint=<\.pt>"):
        privacy_report.run(report_cfg(tiny_sysu_root, tmp_path))
    with pytest.raises(ValueError, match="settings is empty"):
        privacy_report.run(report_cfg(tiny_sysu_root, tmp_path, settings=[]))
    with pytest.raises(ValueError, match=r"learned anonymiser needs the weights.*holds none"):
        privacy_report.run(
            report_cfg(
                tiny_sysu_root,
                tmp_path,
                f"checkpoint={trained['last']}",
                settings=[{"anonymizer": "learned"}],
            )
        )
    with pytest.raises(FileNotFoundError, match="not a folder"):
        privacy_report.run(
            report_cfg(tiny_sysu_root, tmp_path, photos=str(tmp_path / "none"), utility=False)
        )


@pytest.mark.parametrize(("base", "setting"), [("mosaic", "noise"), ("noise", "blur")])
def test_a_setting_replaces_the_whole_anonymizer_group(base: str, setting: str) -> None:
    # Hydra hands the command a struct config: keys only one anonymiser has (the noise
    # anonymiser's key files) must neither be refused nor leak into another setting.
    cfg = load_config([f"anonymizer={base}", "ppa.pose_guided=true"])
    OmegaConf.set_struct(cfg, True)
    row = AnonymizerSetting.from_entry({"anonymizer": setting, "pose_guided": False}, 0, None)
    applied = row.apply(cfg)
    expected = OmegaConf.to_container(load_config([f"anonymizer={setting}"]).anonymizer)
    assert OmegaConf.to_container(applied.anonymizer) == expected
    assert applied.ppa.pose_guided is False and cfg.ppa.pose_guided is True
    assert cfg.anonymizer.name == base  # the run's own config is left alone
