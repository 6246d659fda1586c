"""Bad input through the real entry points: each test backs a row of docs/reliability.md.

Every bad input gets a clear error naming the file / site / key, or (where configured by
``dataset.on_bad_image=skip`` / ``pose.missing=skip|center_prior``) a skip with a warning; never
a crash deep inside torch.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from client.site import SiteTrainer
from ppa.checkpoint import CheckpointError, save_checkpoint
from ppa.cli import evaluate
from ppa.cli import train as train_central
from ppa.config import load_config
from ppa.data import protocols
from ppa.data.errors import CorruptImageError, DatasetLayoutError
from ppa.data.keypoints import KeypointCache, MissingKeypointsError
from ppa.data.loader import create_eval_loader, create_train_loader
from ppa.data.protocols import load_train_set
from ppa.model import create_model
from ppa.node_config import NodeConfigError, site_spec
from ppa.wire import global_keys, pack
from server.checkpoints import CheckpointStore, ServerCheckpoint
from server.run import FederatedRun

from conftest import tiny_overrides

# Fast site training: one batch of P=4 x K=2 per round.
FAST = ["train.max_batches_per_epoch=1", "federation.local_epochs=1"]


# --------------------------------------------------------------------------- helpers
def copy_root(src: Path, dst: Path) -> Path:
    """A private, mutable copy of a (tiny) dataset root."""
    shutil.copytree(src, dst)
    return dst


def site_root(src: Path, dst: Path, cams: tuple[int, ...], ids: int | None = None) -> Path:
    """A deployed SYSU site's root: split files, keypoint cache and only its camera folders
    (optionally only the first `ids` identity folders of each)."""
    (dst / "exp").mkdir(parents=True)
    for f in (src / "exp").iterdir():
        shutil.copy(f, dst / "exp" / f.name)
    shutil.copy(src / "keypoints.npz", dst / "keypoints.npz")
    for cam in cams:
        folders = sorted((src / f"cam{cam}").iterdir())
        for folder in folders[:ids] if ids else folders:
            shutil.copytree(folder, dst / f"cam{cam}" / folder.name)
    return dst


def node(site: str, modality: str, root: Path, **extra: str) -> dict[str, str]:
    return {"site": site, "modality": modality, "data-root": str(root), **extra}


def train_round(trainer: SiteTrainer, arrays: dict | None = None):
    state = trainer.model.state_dict()
    arrays = arrays if arrays is not None else pack(state, global_keys(state))
    return trainer.train_round(arrays, None, server_round=1, local_epochs=1, half_precision=False)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def cfg_for(tmp_path: Path):
    def make(root: Path, *extra: str, dataset: str = "synthetic_sysu") -> DictConfig:
        return load_config(tiny_overrides(root, tmp_path, *FAST, *extra, dataset=dataset))

    return make


@pytest.fixture(scope="module")
def random_checkpoint(tiny_sysu_root: Path, tmp_path_factory) -> Path:
    """An untrained tiny-model checkpoint: enough to drive scripts/evaluate.py's run()."""
    out = tmp_path_factory.mktemp("ckpt")
    cfg = load_config(tiny_overrides(tiny_sysu_root, out))
    torch.manual_seed(0)
    return save_checkpoint(out / "model.pt", create_model(cfg.model, 12), cfg)


# --------------------------------------------------------------------------- images
def test_corrupt_or_empty_image_names_the_file_even_from_a_loader_worker(
    tiny_sysu_root: Path, tmp_path: Path, cfg_for
) -> None:
    root = copy_root(tiny_sysu_root, tmp_path / "root")
    cfg = cfg_for(root)
    records = load_train_set(cfg.dataset).records
    truncate(root / records[0].path)
    (root / records[1].path).write_bytes(b"")
    for workers in (0, 1):
        loader = create_eval_loader(
            records[:4],
            root,
            input_cfg=cfg.input,
            batch_size=4,
            num_workers=workers,
            pose_cfg=cfg.pose,
            keypoints=None,
        )
        # The worker's error keeps its type (not torch's generic RuntimeError) and its path.
        with pytest.raises(CorruptImageError, match=records[0].path) as info:
            next(iter(loader))
        assert info.value.path == root / records[0].path


def test_bad_images_skipped_with_a_warning_when_configured(
    tiny_sysu_root: Path, tmp_path: Path, cfg_for, caplog
) -> None:
    root = site_root(tiny_sysu_root, tmp_path / "cam1", cams=(1,))
    cfg = cfg_for(root, "dataset.on_bad_image=skip")
    trainer = SiteTrainer(cfg, site_spec(node("cam1", "visible", root), cfg))
    bad = trainer.site.records[:2]
    truncate(root / bad[0].path)
    (root / bad[1].path).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="ppa.data.loader"):
        result = train_round(trainer)
    warned = [r.getMessage() for r in caplog.records if "on_bad_image=skip" in r.getMessage()]
    assert len(warned) == 2 and bad[0].path in warned[0] and bad[1].path in warned[1]
    assert all(np.isfinite(v).all() for v in result.arrays.values())


def test_every_image_bad_with_skip_is_a_clear_error(
    tiny_sysu_root: Path, tmp_path: Path, cfg_for
) -> None:
    root = site_root(tiny_sysu_root, tmp_path / "cam3", cams=(3,))
    cfg = cfg_for(root, "dataset.on_bad_image=skip")
    records = load_train_set(cfg.dataset, cameras=[3], require_complete=False).records
    for record in records:
        (root / record.path).write_bytes(b"")
    where = re.escape(str(root))
    with pytest.raises(ValueError, match=f"no usable training images under {where}"):
        create_train_loader(
            records,
            root,
            input_cfg=cfg.input,
            train_cfg=cfg.train,
            pose_cfg=cfg.pose,
            keypoints=None,
            seed=0,
            on_bad_image="skip",
        )


def test_wrong_image_modes_are_read_as_rgb_by_the_loader(
    tiny_sysu_root: Path, tmp_path: Path, cfg_for
) -> None:
    root = copy_root(tiny_sysu_root, tmp_path / "root")
    cfg = cfg_for(root)
    records = load_train_set(cfg.dataset).records[:6]
    grey = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (64, 1))
    wide = (grey.astype(np.uint16) * 257 // 2).astype(np.uint16)  # 16-bit, at most half range
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 7)])
    images = {
        "16-bit": Image.fromarray(wide),
        "palette": Image.fromarray(np.dstack([grey] * 3)).convert("P"),
        "RGBA": Image.fromarray(rgba),
        "grayscale": Image.fromarray(grey),
        "CMYK": Image.fromarray(np.dstack([grey] * 3)).convert("CMYK"),
        "1-bit": Image.fromarray(grey).convert("1"),
    }
    for record, image in zip(records, images.values(), strict=True):
        # PIL decodes by content: a PNG/TIFF written under the record's .jpg name.
        image.save(root / record.path, format="TIFF" if image.mode == "CMYK" else "PNG")
    loader = create_eval_loader(
        records,
        root,
        input_cfg=cfg.input,
        batch_size=6,
        num_workers=0,
        pose_cfg=cfg.pose,
        keypoints=None,
    )
    batch = next(iter(loader))
    assert batch.images.shape == (6, 3, 64, 32)
    assert torch.isfinite(batch.images).all()
    assert batch.images.min() >= 0.0 and batch.images.max() <= 1.0
    # 16-bit is rescaled, not clipped to white: at most half range stays at most ~half.
    assert batch.images[0].max() <= 0.51 and batch.images[0].mean() > 0.1
    # RGBA: alpha dropped, colour kept.
    torch.testing.assert_close(batch.images[2], batch.images[3])


def test_bad_test_image_is_an_error_even_with_skip(
    tiny_sysu_root: Path, tmp_path: Path, random_checkpoint: Path
) -> None:
    root = copy_root(tiny_sysu_root, tmp_path / "root")
    overrides = tiny_overrides(
        root,
        tmp_path,
        f"checkpoint={random_checkpoint}",
        "dataset.on_bad_image=skip",
        "eval.privacy_images=0",
    )
    query = protocols.test_settings(load_config(overrides).dataset)[0].split.query[0]
    (root / query.path).write_bytes(b"")
    # Dropping a test image would silently change the protocol: skip does not apply here.
    with pytest.raises(CorruptImageError, match=query.path):
        evaluate.run(load_config(overrides))


# --------------------------------------------------------------------------- keypoints
def drop_keypoints(root: Path, keep: callable) -> list[str]:
    cache = KeypointCache.load(root / "keypoints.npz")
    dropped = [k for k in cache if not keep(k)]
    KeypointCache({k: v for k, v in cache.items() if keep(k)}, source="test").save(
        root / "keypoints.npz"
    )
    return dropped


def test_missing_keypoints_error_skip_or_prior_at_the_train_loader(
    tiny_sysu_root: Path, tmp_path: Path, cfg_for, caplog
) -> None:
    root = copy_root(tiny_sysu_root, tmp_path / "root")
    dropped = drop_keypoints(root, keep=lambda path: not path.startswith("cam1/0001/"))
    cfg = cfg_for(root)
    train = load_train_set(cfg.dataset)
    cache = KeypointCache.load(root / "keypoints.npz")

    def loader(missing: str):
        pose = OmegaConf.merge(cfg.pose, {"missing": missing})
        return create_train_loader(
            train.records,
            root,
            input_cfg=cfg.input,
            train_cfg=cfg.train,
            pose_cfg=pose,
            keypoints=cache,
            seed=0,
        )

    with pytest.raises(MissingKeypointsError) as info:
        loader("error")
    assert str(root / "keypoints.npz") in str(info.value)
    assert info.value.image_path in dropped and "pose.missing=skip|center_prior" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="ppa.data.loader"):
        skipping = loader("skip")
    assert f"dropping {len(dropped)} of {len(train.records)}" in caplog.text
    assert not {r.path for r in skipping.dataset.records} & set(dropped)
    prior = loader("center_prior")
    assert len(prior.dataset) == len(train.records)
    assert (next(iter(prior)).keypoints[..., 2] > 0).any()


def test_missing_test_keypoints_with_skip_fall_back_to_the_prior(
    tiny_sysu_root: Path, tmp_path: Path, random_checkpoint: Path, caplog
) -> None:
    root = copy_root(tiny_sysu_root, tmp_path / "root")
    drop_keypoints(root, keep=lambda path: not path.startswith("cam3/"))
    overrides = tiny_overrides(
        root,
        tmp_path,
        f"checkpoint={random_checkpoint}",
        "pose.missing=skip",
        "eval.privacy_images=0",
        "eval.use_checkpoint_config=false",
    )
    with caplog.at_level(logging.WARNING, logger="ppa.eval.evaluate"):
        metrics = evaluate.run(load_config(overrides))
    assert "does not apply to test images; using center_prior" in caplog.text
    assert metrics.is_file()


def test_keypoints_outside_the_image_or_not_finite_are_missing_joints(
    tiny_sysu_root: Path, tmp_path: Path, cfg_for
) -> None:
    root = copy_root(tiny_sysu_root, tmp_path / "root")
    cache = KeypointCache.load(root / "keypoints.npz")
    bad_values = (1e9, -50.0, np.nan, np.inf)
    for i, key in enumerate(sorted(cache)):
        points = cache[key].copy()
        points[: 3 + i % 14, i % 2] = bad_values[i % 4]  # some joints of every image
        points[16, 2] = np.nan if i % 3 == 0 else points[16, 2]  # and a NaN score
        cache[key] = points
    cache.save()
    cfg = cfg_for(root)
    train = load_train_set(cfg.dataset)
    loader = create_train_loader(
        train.records,
        root,
        input_cfg=cfg.input,
        train_cfg=cfg.train,
        pose_cfg=cfg.pose,
        keypoints=cache,
        seed=0,
    )
    batch = next(iter(loader))
    assert torch.isfinite(batch.keypoints).all()
    assert (batch.keypoints[:, :3, 2] == 0).all()  # every damaged joint is a missing joint
    assert (batch.keypoints[..., 2] > 0).any()  # the undamaged ones are kept
    # A site trains on such a cache and sends a finite update.
    trainer = SiteTrainer(cfg, site_spec(node("cam1", "visible", root), cfg))
    result = train_round(trainer)
    assert all(np.isfinite(v).all() for v in result.arrays.values())
    assert np.isfinite(result.metrics["loss"])


# --------------------------------------------------------------------------- sites
def test_one_identity_site_error_names_the_site(
    tiny_sysu_root: Path, tmp_path: Path, cfg_for
) -> None:
    root = site_root(tiny_sysu_root, tmp_path / "data", cams=(3,), ids=1)
    cfg = cfg_for(root)
    with pytest.raises(ValueError, match=r"site 'cam3'.*1 identit"):
        train_round(SiteTrainer(cfg, site_spec(node("cam3", "infrared", root), cfg)))


def test_unknown_modality_in_node_config(tiny_sysu_root: Path, cfg_for) -> None:
    cfg = cfg_for(tiny_sysu_root)
    with pytest.raises(NodeConfigError, match=r"unknown modality 'xyz'.*visible, infrared"):
        site_spec(node("cam3", "xyz", tiny_sysu_root), cfg)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"site": "cam3", "data-root": "{root}"}, r"lacks \['modality'\]"),
        ({"site": " ", "modality": "ir", "data-root": "{root}"}, r"lacks \['site'\]"),
        (
            {"site": "cam3", "modality": "ir", "data-root": "{root}/exp/test_id.txt"},
            r"test_id\.txt is not a directory",
        ),
        (
            {"site": "cam3", "modality": "ir", "data-root": "{root}/absent"},
            r"absent is not a directory",
        ),
        (
            {"site": "cam3", "modality": "ir", "data-root": "{root}", "dataset": "regdb"},
            r"dataset='regdb' but the run uses dataset.protocol='sysu'",
        ),
        ({"partition": 3}, r"names no site"),
    ],
)
def test_malformed_node_config_is_named(
    tiny_sysu_root: Path, cfg_for, config: dict, message: str
) -> None:
    cfg = cfg_for(tiny_sysu_root)
    config = {
        k: v.format(root=tiny_sysu_root) if isinstance(v, str) else v for k, v in config.items()
    }
    with pytest.raises(NodeConfigError, match=message):
        site_spec(config, cfg)


def test_simulation_partition_count_mismatch_is_named(tiny_sysu_root: Path, cfg_for) -> None:
    cfg = cfg_for(tiny_sysu_root)
    with pytest.raises(
        NodeConfigError,
        match=r"6 sites .* runs 3 SuperNodes: .*"
        r"num-supernodes=6\"?",
    ):
        SiteTrainer(cfg, site_spec({"partition-id": 0, "num-partitions": 3}, cfg))


@pytest.mark.parametrize("partition_id", ["abc", 7, -1])
def test_partition_id_out_of_range_is_named(
    tiny_sysu_root: Path, cfg_for, partition_id: object
) -> None:
    cfg = cfg_for(tiny_sysu_root)
    with pytest.raises(NodeConfigError, match="partition-id"):
        site_spec({"partition-id": partition_id, "num-partitions": 6}, cfg)


@pytest.mark.parametrize(("site", "modality"), [("cam3", "visible"), ("cam9", "infrared")])
def test_site_not_in_the_partition_or_of_another_modality(
    tiny_sysu_root: Path, cfg_for, site: str, modality: str
) -> None:
    cfg = cfg_for(tiny_sysu_root)
    with pytest.raises(NodeConfigError, match=f"site '{site}'"):
        SiteTrainer(cfg, site_spec(node(site, modality, tiny_sysu_root), cfg))


# --------------------------------------------------------------------------- dataset layout
def test_regdb_root_given_as_sysu_and_back(
    tiny_sysu_root: Path, tiny_regdb_root: Path, cfg_for
) -> None:
    as_sysu = cfg_for(tiny_regdb_root)
    for call in (
        lambda: load_train_set(as_sysu.dataset),
        lambda: protocols.test_settings(as_sysu.dataset),
        lambda: SiteTrainer(as_sysu, site_spec(node("cam3", "ir", tiny_regdb_root), as_sysu)),
    ):
        with pytest.raises(DatasetLayoutError, match=r"not a SYSU-MM01 root.*dataset=regdb"):
            call()
    as_regdb = cfg_for(tiny_sysu_root, dataset="synthetic_regdb")
    for call in (
        lambda: load_train_set(as_regdb.dataset),
        lambda: protocols.test_settings(as_regdb.dataset),
    ):
        with pytest.raises(DatasetLayoutError, match=r"not a RegDB root.*dataset=sysu"):
            call()


def test_empty_split_and_index_files_are_named(
    tiny_sysu_root: Path, tiny_regdb_root: Path, tmp_path: Path, cfg_for
) -> None:
    sysu = copy_root(tiny_sysu_root, tmp_path / "sysu")
    (sysu / "exp" / "test_id.txt").write_text("")
    (sysu / "exp" / "val_id.txt").write_text("\n\n")
    cfg = cfg_for(sysu)
    with pytest.raises(DatasetLayoutError, match=r"test_id\.txt: split file is empty"):
        protocols.test_settings(cfg.dataset)
    with pytest.raises(DatasetLayoutError, match=r"val_id\.txt: split file is empty"):
        load_train_set(cfg.dataset)
    regdb = copy_root(tiny_regdb_root, tmp_path / "regdb")
    (regdb / "idx" / "train_thermal_1.txt").write_text("")
    with pytest.raises(DatasetLayoutError, match=r"train_thermal_1\.txt: index file lists no"):
        load_train_set(cfg_for(regdb, dataset="synthetic_regdb").dataset)


# --------------------------------------------------------------------------- checkpoints
def test_train_central_refuses_a_checkpoint_of_another_model(
    tiny_sysu_root: Path, tmp_path: Path, cfg_for
) -> None:
    other = save_checkpoint(
        tmp_path / "other.pt",
        create_model(cfg_for(tiny_sysu_root).model, 5),
        cfg_for(tiny_sysu_root),
    )
    cfg = cfg_for(tiny_sysu_root, f"checkpoint={other}", "train.epochs=1")
    with pytest.raises(CheckpointError, match=r"other\.pt does not fit this model.*classifier"):
        train_central.train(cfg)


def store_foreign_round(cfg: DictConfig, num_classes: int, model_cfg=None) -> None:
    """A server checkpoint of another model in the run's checkpoint folder (the rest of it, the
    strategy state, as this run would write it)."""
    strategy = FederatedRun(cfg).strategy.state_dict()
    model = create_model(model_cfg or cfg.model, num_classes)
    state = model.state_dict()
    CheckpointStore(Path(cfg.output_dir) / "checkpoints").save(
        ServerCheckpoint(
            server_round=1,
            arrays=pack(state, global_keys(state)),
            strategy=strategy,
            history=[{"round": 1}],
        )
    )


def test_server_resume_refuses_arrays_of_another_architecture(
    tiny_sysu_root: Path, cfg_for
) -> None:
    cfg = cfg_for(tiny_sysu_root)
    other = load_config(["model=resnet18", "model.pretrained=false"]).model
    store_foreign_round(cfg, 12, model_cfg=other)
    with pytest.raises(ValueError, match="belongs to another model"):
        FederatedRun(cfg, resume=True)


def test_server_resume_refuses_arrays_of_other_shapes(tiny_sysu_root: Path, cfg_for) -> None:
    cfg = cfg_for(tiny_sysu_root)
    store_foreign_round(cfg, 7)  # the tiny set has 12 classes
    with pytest.raises(ValueError, match=r"classifier\.weight"):
        FederatedRun(cfg, resume=True)


def test_site_refuses_global_arrays_of_another_model(
    tiny_sysu_root: Path, tmp_path: Path, cfg_for
) -> None:
    root = site_root(tiny_sysu_root, tmp_path / "cam1", cams=(1,))
    cfg = cfg_for(root)
    trainer = SiteTrainer(cfg, site_spec(node("cam1", "visible", root), cfg))
    other = create_model(cfg.model, 7).state_dict()
    with pytest.raises(ValueError, match=r"site 'cam1'.*classifier\.weight"):
        train_round(trainer, pack(other, global_keys(other)))
