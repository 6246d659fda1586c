"""The keypoint cache: one file per dataset root, relative image path -> COCO-17 (x, y, score)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from ppa.pose.coco import NUM_KEYPOINTS
from ppa.io import atomic_write

DEFAULT_CACHE_NAME = "keypoints.npz"


class MissingKeypointsError(KeyError):
    """An image has no entry in the keypoint cache."""

    def __init__(self, cache_path: Path | None, image_path: str):
        self.cache_path = cache_path
        self.image_path = image_path
        super().__init__(
            f"no keypoints for {image_path!r} in {cache_path or '<in-memory cache>'}; "
            "run scripts/extract_keypoints.py for this dataset root, or set "
            "pose.missing=skip|center_prior"
        )

    def __str__(self) -> str:
        return self.args[0]


class KeypointCache(Mapping[str, np.ndarray]):
    """Mapping relative image path -> float32 array (17, 3): x, y in image pixels, score.

    Stored as ``.npz`` with arrays ``paths`` (N,) str and ``keypoints`` (N, 17, 3) float32,
    plus a ``source`` string (which backend wrote it).
    """

    def __init__(
        self,
        entries: Mapping[str, np.ndarray] | None = None,
        *,
        path: Path | None = None,
        source: str = "unknown",
    ):
        self._entries: dict[str, np.ndarray] = {}
        self.path = path
        self.source = source
        for key, value in (entries or {}).items():
            self[key] = value

    # Mapping interface ---------------------------------------------------------------
    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._entries[key]
        except KeyError:
            raise MissingKeypointsError(self.path, key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    # Mutation -------------------------------------------------------------------------
    def __setitem__(self, key: str, value: np.ndarray) -> None:
        arr = np.asarray(value, dtype=np.float32)
        if arr.shape != (NUM_KEYPOINTS, 3):
            raise ValueError(f"keypoints for {key!r} have shape {arr.shape}, expected (17, 3)")
        self._entries[str(key)] = arr

    # Persistence ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> KeypointCache:
        """Read a cache file; raises FileNotFoundError / ValueError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"keypoint cache not found: {path} (write it with scripts/extract_keypoints.py)"
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                paths = data["paths"]
                keypoints = data["keypoints"]
                source = str(data["source"]) if "source" in data.files else "unknown"
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"unreadable keypoint cache {path}: {err}") from err
        if (
            keypoints.ndim != 3
            or keypoints.shape[1:] != (NUM_KEYPOINTS, 3)
            or len(paths) != len(keypoints)
        ):
            raise ValueError(
                f"malformed keypoint cache {path}: paths {paths.shape}, keypoints "
                f"{keypoints.shape} (expected (N,) and (N, 17, 3))"
            )
        cache = cls(path=path, source=source)
        cache._entries = {
            str(p): k.astype(np.float32) for p, k in zip(paths, keypoints, strict=True)
        }
        return cache

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write atomically (temporary file in the same folder, then rename)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("KeypointCache.save needs a path")
        keys = sorted(self._entries)
        paths = np.array(keys, dtype=str) if keys else np.zeros((0,), dtype="<U1")
        keypoints = (
            np.stack([self._entries[k] for k in keys])
            if keys
            else np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
        )
        with atomic_write(target, fsync=False) as fh:
            np.savez(fh, paths=paths, keypoints=keypoints, source=np.array(self.source))
        self.path = target
        return target


def cache_path(root: str | os.PathLike, name: str = DEFAULT_CACHE_NAME) -> Path:
    """Where the keypoint cache of a dataset root lives."""
    return Path(root) / name


def load_dataset_keypoints(
    root: str | os.PathLike, name: str = DEFAULT_CACHE_NAME, *, required: bool = True
) -> KeypointCache | None:
    """The keypoint cache of a dataset root; None when absent and not `required`."""
    path = cache_path(root, name)
    if not path.is_file() and not required:
        return None
    return KeypointCache.load(path)
