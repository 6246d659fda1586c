"""ppa/data/site_roots.py: a camera site's root holds its camera, the split files and its own
keypoints, and the site's reader loads it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ppa.data import sysu
from ppa.data.errors import DatasetLayoutError
from ppa.data.site_roots import write_sysu_site_root, write_sysu_site_roots
from ppa.synthetic.writer import write_synthetic_sysu


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sysu") / "sysu"
    write_synthetic_sysu(
        root,
        num_train_ids=8,
        num_val_ids=2,
        num_test_ids=4,
        images_per_camera=2,
        image_height=32,
        image_width=16,
        camera_coverage=1.0,
        seed=0,
    )
    return root


def test_each_site_root_holds_only_its_camera(source: Path, tmp_path: Path) -> None:
    roots = write_sysu_site_roots(source, tmp_path / "sites")
    assert sorted(roots) == [f"cam{c}" for c in sysu.CAMERAS]
    for name, root in roots.items():
        assert sorted(p.name for p in root.iterdir()) == sorted([name, "exp", "keypoints.npz"])
        images = sorted(p.relative_to(root) for p in (root / name).rglob("*.jpg"))
        expected = sorted(p.relative_to(source) for p in (source / name).rglob("*.jpg"))
        assert images == expected and images
        # Hard links: the same files, no copy.
        first = root / images[0]
        assert os.stat(first).st_ino == os.stat(source / images[0]).st_ino
        paths = np.load(root / "keypoints.npz")["paths"]
        assert len(paths) == len(images)
        assert {str(p).split("/")[0] for p in paths} == {name}
        assert (root / "exp" / "train_id.txt").read_text() == (
            source / "exp" / "train_id.txt"
        ).read_text()


def test_site_root_loads_as_that_camera_alone(source: Path, tmp_path: Path) -> None:
    from ppa.config import load_config
    from ppa.data.protocols import load_train_set

    cfg = load_config(["dataset=synthetic_sysu"])
    full = load_train_set(cfg.dataset, root=source)
    root = write_sysu_site_root(source, tmp_path / "cam3", 3)
    own = load_train_set(cfg.dataset, root=root, cameras=[3], require_complete=False)
    assert own.records and {r.cam for r in own.records} == {3}
    assert sorted(r.path for r in own.records) == sorted(r.path for r in full.records if r.cam == 3)
    # The label space comes from the split files: the same at every site.
    assert own.num_classes == full.num_classes
    assert own.pid_to_label == full.pid_to_label


def test_bad_camera_and_missing_folders_are_named(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="got camera 9"):
        write_sysu_site_root(source, tmp_path / "x", 9)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="camera folder is missing"):
        write_sysu_site_root(tmp_path / "empty", tmp_path / "y", 2)
