"""protocols: the composed Hydra dataset config -> training set and the test settings."""

from __future__ import annotations

import io

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ppa.config import load_config
from ppa.data import partition, protocols, regdb, sysu
from ppa.data.records import Modality, TrainRecord
from ppa.data.splits import TrainSet


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 4, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


JPEG = _jpeg()


def write_sysu(root):
    """Train ids 1, 2 (val 3); test ids 4, 5; every id in every camera with two images."""
    (root / "exp").mkdir(parents=True)
    for name, ids in (("train_id", "2,1"), ("val_id", "3"), ("test_id", "5,4")):
        (root / "exp" / f"{name}.txt").write_text(ids)
    for cam in range(1, 7):
        for pid in range(1, 6):
            folder = root / f"cam{cam}" / f"{pid:04d}"
            folder.mkdir(parents=True)
            for i in (1, 2):
                (folder / f"{i:04d}.jpg").write_bytes(JPEG)
    return root


def write_regdb(root, trials=(1, 2)):
    (root / "idx").mkdir(parents=True)
    for trial in trials:
        for part, pids in (("train", (trial, trial + 10)), ("test", (50 + trial, 60))):
            for tag, folder in (("visible", "Visible"), ("thermal", "Thermal")):
                lines = []
                for pid in pids:
                    path = f"{folder}/{pid}/{tag}_{pid}.jpg"
                    (root / path).parent.mkdir(parents=True, exist_ok=True)
                    (root / path).write_bytes(JPEG)
                    lines.append(f"{path} {pid}")
                (root / "idx" / f"{part}_{tag}_{trial}.txt").write_text("\n".join(lines))
    return root


def test_sysu_settings_from_the_shipped_config(tmp_path):
    root = write_sysu(tmp_path / "sysu")
    cfg = load_config(["dataset=synthetic_sysu", f"dataset.root={root}", "dataset.test.trials=3"])
    train = protocols.load_train_set(cfg.dataset)
    assert train.num_classes == 3 and len(train.records) == 3 * 6 * 2
    settings = protocols.test_settings(cfg.dataset)
    assert [(s.group, s.trial) for s in settings] == [
        ("all", 0),
        ("all", 1),
        ("all", 2),
        ("indoor", 0),
        ("indoor", 1),
        ("indoor", 2),
    ]
    for setting in settings:
        expected = sysu.load_test_split(root, mode=setting.group, trial=setting.trial, shots=1)
        assert setting.split == expected
    assert {r.cam for r in settings[3].split.gallery} == {1, 2}


def test_sysu_multi_shot_and_listed_trials(tmp_path):
    root = write_sysu(tmp_path / "sysu")
    cfg = OmegaConf.create(
        {
            "protocol": "sysu",
            "root": str(root),
            "test": {"modes": ["indoor"], "trials": [4, 7], "shots": 10},
        }
    )
    settings = protocols.test_settings(cfg)
    assert [(s.group, s.trial) for s in settings] == [("indoor", 4), ("indoor", 7)]
    assert len(settings[0].split.gallery) == 2 * 2 * 2  # 2 ids x cams 1, 2 x both images


def test_regdb_tests_the_trial_it_trains_on(tmp_path):
    root = write_regdb(tmp_path / "regdb")
    cfg = load_config(["dataset=synthetic_regdb", f"dataset.root={root}", "dataset.train_trial=2"])
    train = protocols.load_train_set(cfg.dataset)
    assert train.pid_to_label == {2: 0, 12: 1}
    # The test trials follow the training trial: one model per trial, tested on it only.
    settings = protocols.test_settings(cfg.dataset)
    assert [(s.group, s.trial) for s in settings] == [
        ("visible_to_thermal", 2),
        ("thermal_to_visible", 2),
    ]
    assert settings[0].split == regdb.load_test_split(root, 2, "visible_to_thermal")
    assert settings[1].split.query[0].modality is Modality.INFRARED
    # Listing other trials still reads them (a reader), but evaluation refuses them.
    listed = load_config(
        [
            "dataset=synthetic_regdb",
            f"dataset.root={root}",
            "dataset.train_trial=2",
            "dataset.test.trials=[1,2]",
        ]
    )
    assert [s.trial for s in protocols.test_settings(listed.dataset)] == [1, 2, 1, 2]


def test_relative_root_resolves_against_the_workdir(tmp_path, monkeypatch):
    write_sysu(tmp_path / "data" / "sysu")
    monkeypatch.setenv("PPA_WORKDIR", str(tmp_path))
    cfg = OmegaConf.create({"protocol": "sysu", "root": "data/sysu"})
    assert protocols.load_train_set(cfg).root == tmp_path / "data" / "sysu"


def test_site_restrictions(tmp_path):
    root = write_sysu(tmp_path / "sysu")
    cfg = OmegaConf.create({"protocol": "sysu", "root": str(root)})
    infrared = protocols.load_train_set(cfg, modalities=["ir"])
    assert {r.cam for r in infrared.records} == {3, 6} and infrared.num_classes == 3
    cam5 = protocols.load_train_set(cfg, cameras=[5])
    assert {r.cam for r in cam5.records} == {5}
    with pytest.raises(ValueError, match="no SYSU-MM01 camera"):
        protocols.load_train_set(cfg, cameras=[5], modalities=["infrared"])

    rroot = write_regdb(tmp_path / "regdb")
    rcfg = OmegaConf.create({"protocol": "regdb", "root": str(rroot), "train_trial": 1})
    thermal = protocols.load_train_set(rcfg, cameras=[2])
    assert {r.modality for r in thermal.records} == {Modality.INFRARED}
    assert thermal.num_classes == 2


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"dataset\.protocol"):
        protocols.load_train_set(OmegaConf.create({"protocol": "market", "root": "x"}))
    with pytest.raises(KeyError, match=r"dataset\.root"):
        protocols.load_train_set(OmegaConf.create({"protocol": "sysu"}))
    root = write_sysu(tmp_path / "sysu")
    with pytest.raises(KeyError, match=r"dataset\.test\.shots"):
        protocols.test_settings(
            OmegaConf.create(
                {"protocol": "sysu", "root": str(root), "test": {"modes": ["all"], "trials": 1}}
            )
        )
    with pytest.raises(KeyError, match=r"dataset\.train_trial"):
        protocols.load_train_set(OmegaConf.create({"protocol": "regdb", "root": str(root)}))
    with pytest.raises(ValueError, match=r"dataset\.test\.trials"):
        protocols.test_settings(
            OmegaConf.create(
                {
                    "protocol": "sysu",
                    "root": str(root),
                    "test": {"modes": ["all"], "trials": 0, "shots": 1},
                }
            )
        )


def test_label_space_needs_no_images(tmp_path):
    root = write_sysu(tmp_path / "sysu")
    cfg = OmegaConf.create({"protocol": "sysu", "root": str(root)})
    assert protocols.load_label_space(cfg) == protocols.load_train_set(cfg).pid_to_label
    rroot = write_regdb(tmp_path / "regdb")
    rcfg = OmegaConf.create({"protocol": "regdb", "root": str(rroot), "train_trial": 2})
    assert protocols.load_label_space(rcfg) == {2: 0, 12: 1}


def test_the_registry_names_the_valid_protocols_and_takes_new_ones(monkeypatch):
    with pytest.raises(ValueError, match=r"one of sysu, regdb, got 'market'"):
        protocols.get_protocol("market")
    assert protocols.get_protocol("sysu").site_camera("cam3") == 3
    assert protocols.get_protocol("regdb").site_camera("thermal") is None
    assert [name for _, name, _ in protocols.get_protocol("regdb").camera_sites()] == [
        "visible",
        "thermal",
    ]

    class Corridor(protocols.DatasetProtocol):
        """A made-up family with one visible and one infrared camera."""

        name = "corridor"
        metrics = "regdb"

        def camera_sites(self):
            return [(7, "door", Modality.VISIBLE), (9, "hall", Modality.INFRARED)]

    monkeypatch.setitem(protocols.PROTOCOLS, "corridor", Corridor())
    assert protocols.protocol_of(OmegaConf.create({"protocol": "corridor"})) == "corridor"
    layout = partition.site_layout("by_camera", protocol="corridor")
    assert layout == [("door", Modality.VISIBLE), ("hall", Modality.INFRARED)]
    records = [
        TrainRecord(f"{cam}/{i}.jpg", pid, cam, modality, label)
        for cam, modality in ((7, Modality.VISIBLE), (9, Modality.INFRARED))
        for i, (pid, label) in enumerate(((10, 0), (11, 1)))
    ]
    train = TrainSet("/nowhere", records, 2, {10: 0, 11: 1})
    sites = partition.partition_sites(train, "by_camera", protocol="corridor")
    assert [(s.name, [r.cam for r in s.records]) for s in sites] == [
        ("door", [7, 7]),
        ("hall", [9, 9]),
    ]
