"""Per-site data roots cut from one SYSU-MM01 root: what a camera site holds, and nothing more.

A deployed site reads its ``data-root`` (node config) and trains on its own camera only; in a
real federation that root is the site's disk. For a single-host trial (containers, or the
loopback deployment) the same separation comes from one folder per site holding:

- ``cam<N>/``: the site's images, hard-linked from the source root (no copy; a copy where
  the two folders lie on different file systems);
- ``exp/``: the protocol's identity split files (lists of integer ids, no images);
- the keypoint cache with the entries of ``cam<N>/`` only (other cameras' keypoints describe
  other sites' images).

    python -m ppa.data.site_roots data/SYSU-MM01 outputs/sites   # -> outputs/sites/cam1 .. cam6
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ppa.data import sysu
from ppa.data.errors import DatasetLayoutError
from ppa.data.keypoints import DEFAULT_CACHE_NAME, KeypointCache

logger = logging.getLogger(__name__)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed there
        shutil.copy2(source, target)


def write_sysu_site_root(
    source: str | os.PathLike,
    target: str | os.PathLike,
    camera: int,
    *,
    keypoints: str = DEFAULT_CACHE_NAME,
) -> Path:
    """Write the root of the site holding SYSU-MM01 camera `camera` under `target`.

    `target` is replaced if it exists. The keypoint cache is written only when `source` has
    one. Returns `target`.
    """
    source, target = Path(source), Path(target)
    cam_dir = source / sysu.camera_folder(camera)
    sysu.camera_modality(camera)  # validates the camera number
    if not cam_dir.is_dir():
        raise DatasetLayoutError(cam_dir, "camera folder is missing")
    split_dir = source / sysu.SPLIT_DIR
    if not split_dir.is_dir():
        raise DatasetLayoutError(split_dir, "split folder is missing")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(cam_dir, target / cam_dir.name, copy_function=_link_or_copy)
    shutil.copytree(split_dir, target / split_dir.name)
    cache_file = source / keypoints
    if cache_file.is_file():
        full = KeypointCache.load(cache_file)
        prefix = f"{cam_dir.name}/"
        own = KeypointCache({k: full[k] for k in full if k.startswith(prefix)}, source=full.source)
        own.save(target / keypoints)
    return target


def write_sysu_site_roots(
    source: str | os.PathLike,
    target: str | os.PathLike,
    cameras: Sequence[int] = sysu.CAMERAS,
    *,
    keypoints: str = DEFAULT_CACHE_NAME,
) -> dict[str, Path]:
    """One site root per camera: ``target/cam<N>``; returns site name -> root."""
    roots = {}
    for camera in cameras:
        name = sysu.camera_folder(camera)
        roots[name] = write_sysu_site_root(source, Path(target) / name, camera, keypoints=keypoints)
        logger.info("site root %s: %s", name, roots[name])
    return roots


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        logger.error("usage: python -m ppa.data.site_roots SYSU_ROOT TARGET_DIR")
        return 2
    write_sysu_site_roots(argv[0], argv[1])
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main(sys.argv[1:]))
