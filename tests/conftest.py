"""Shared fixtures: tiny synthetic SYSU-MM01 / RegDB sets and configs composed against them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from ppa.config import load_config
from ppa.data.noise_keys import KEY_DIR_ENV
from ppa.synthetic.writer import write_synthetic_regdb, write_synthetic_sysu

# Tests run one after another on two cores; one intra-op thread per process avoids the
# oversubscription that makes parallel runs (Ray actors, subprocesses) crawl.
torch.set_num_threads(1)

TINY_INPUT = ["input.height=64", "input.width=32"]


@pytest.fixture(scope="session", autouse=True)
def noise_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Noise keys made by tests (and their subprocesses) go to a temporary folder, not to the
    working directory's outputs/keys."""
    folder = tmp_path_factory.mktemp("noise-keys")
    previous = os.environ.get(KEY_DIR_ENV)
    os.environ[KEY_DIR_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(KEY_DIR_ENV, None)
    else:
        os.environ[KEY_DIR_ENV] = previous


@pytest.fixture(scope="session")
def tiny_sysu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic SYSU-MM01 (10 train, 2 val, 6 test ids; 64 x 32 images)."""
    root = tmp_path_factory.mktemp("data") / "tiny_sysu"
    write_synthetic_sysu(
        root,
        num_train_ids=10,
        num_val_ids=2,
        num_test_ids=6,
        images_per_camera=3,
        image_height=64,
        image_width=32,
        camera_coverage=0.9,
        seed=0,
    )
    return root


@pytest.fixture(scope="session")
def tiny_regdb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic RegDB (12 ids, 4 images per modality; 64 x 32 images)."""
    root = tmp_path_factory.mktemp("data") / "tiny_regdb"
    write_synthetic_regdb(
        root, num_ids=12, images_per_modality=4, image_height=64, image_width=32, seed=0
    )
    return root


def tiny_overrides(
    root: Path, tmp_path: Path, *extra: str, dataset: str = "synthetic_sysu"
) -> list[str]:
    """Overrides for fast CPU runs on a tiny set: tiny model, 64 x 32 input, few trials."""
    trials = "dataset.test.trials=2" if dataset == "synthetic_sysu" else "dataset.test.trials=[1]"
    return [
        f"dataset={dataset}",
        f"dataset.root={root}",
        f"output_dir={tmp_path / 'out'}",
        "model=tiny",
        *TINY_INPUT,
        trials,
        "train.num_ids=4",
        "train.num_instances=2",
        "train.num_workers=0",
        "eval.num_workers=0",
        "eval.batch_size=64",
        "train.warmup_epochs=0",
        "eval.privacy_images=16",
        # Explicit, so runs through ppa-simulate (whose default experiment is the
        # demo) train and evaluate the same way as direct calls.
        "federation.local_epochs=1",
        "federation.evaluate_every=1",
        *extra,
    ]


@pytest.fixture
def tiny_cfg(tiny_sysu_root: Path, tmp_path: Path) -> DictConfig:
    return load_config(tiny_overrides(tiny_sysu_root, tmp_path))


REPO = Path(__file__).resolve().parent.parent
