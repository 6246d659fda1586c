"""Run a keypoint backend over a dataset root and keep its keypoint cache up to date.

What scripts/extract_keypoints.py does, as a library: enumerate every image under the root,
skip those already in the cache (resume), run the backend in batches while the next batch is
decoded, write the cache atomically every few hundred images and on any failure, and report
per camera how often a person was found and how confident the joints are.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppa.data.errors import CorruptImageError
from ppa.data.images import read_image
from ppa.data.keypoints import KeypointCache
from ppa.io import atomic_write
from ppa.keypoint_extraction.base import PoseBackend
from ppa.progress_bar import ProgressBar  # log lines, not a bar, when not on a terminal

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
ON_BAD_IMAGE = ("error", "skip")
ROOT_GROUP = "."
_FLAG_LOG_LIMIT = 10


class CacheSourceMismatchError(ValueError):
    """Resuming would mix keypoints of two different backends in one cache."""


@dataclass(frozen=True)
class ExtractionSettings:
    """How to run: batch size, checkpoint cadence, resume, and what counts as a person."""

    batch_size: int = 16
    checkpoint_every: int = 512
    resume: bool = True
    min_confidence: float = 0.3
    min_joints: int = 5
    on_bad_image: str = "error"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"pose_backend.batch_size={self.batch_size}: must be >= 1")
        if self.checkpoint_every < 1:
            raise ValueError(f"pose_backend.checkpoint_every={self.checkpoint_every}: must be >= 1")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"pose_backend.min_confidence={self.min_confidence}: expected [0, 1]")
        if not 1 <= self.min_joints <= 17:
            raise ValueError(f"pose_backend.min_joints={self.min_joints}: expected 1..17")
        if self.on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(
                f"dataset.on_bad_image={self.on_bad_image!r}: expected one of {ON_BAD_IMAGE}"
            )


@dataclass
class CameraStats:
    """Detection statistics of one camera folder."""

    images: int = 0
    detected: int = 0
    detection_rate: float = 0.0
    mean_confidence: float = 0.0


@dataclass
class ExtractionReport:
    """What one run did and how the cache looks now (written as JSON next to the cache)."""

    backend: str
    source: str
    root: str
    cache: str
    min_confidence: float
    min_joints: int
    images_total: int = 0
    already_cached: int = 0
    processed: int = 0
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    per_camera: dict[str, CameraStats] = field(default_factory=dict)
    overall: CameraStats = field(default_factory=CameraStats)
    no_person: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def list_images(root: Path, exclude: Sequence[Path] = ()) -> list[str]:
    """Every image file in the folders under `root` (jpg/jpeg/png/bmp, any case), sorted keys.

    Keys are POSIX paths relative to the root, the same keys the dataset readers use. Dataset
    images live in camera folders (SYSU ``cam1``..``cam6``, RegDB ``Visible``/``Thermal``), so
    files at the top of the root are not crops and are skipped (the synthetic writer's
    ``preview.png`` contact sheet). Hidden files and folders are skipped, and so are the paths
    in `exclude` (the cache and its report).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found or not a folder: {root}")
    excluded = {p.resolve() for p in exclude}
    keys: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if Path(folder) == root:
            continue  # top-level files: previews, manifests, the cache
        for name in files:
            path = Path(folder) / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.resolve() in excluded:
                continue
            keys.append(path.relative_to(root).as_posix())
    keys.sort()
    return keys


def camera_of(key: str) -> str:
    """The camera group of an image: its top-level folder (SYSU ``cam3``, RegDB ``Thermal``);
    ``.`` for a key without a folder."""
    head, sep, _ = key.partition("/")
    return head if sep else ROOT_GROUP


def report_path_for(cache_file: Path) -> Path:
    """``keypoints.npz`` -> ``keypoints.report.json`` in the same folder."""
    return cache_file.with_name(cache_file.stem + ".report.json")


def person_found(keypoints: np.ndarray, min_confidence: float, min_joints: int) -> bool:
    """At least `min_joints` joints at or above `min_confidence`."""
    return int((keypoints[:, 2] >= min_confidence).sum()) >= min_joints


def _stats(values: list[np.ndarray], settings: ExtractionSettings) -> CameraStats:
    if not values:
        return CameraStats()
    arr = np.stack(values)
    found = (arr[:, :, 2] >= settings.min_confidence).sum(axis=1) >= settings.min_joints
    return CameraStats(
        images=len(values),
        detected=int(found.sum()),
        detection_rate=round(float(found.mean()), 4),
        mean_confidence=round(float(arr[:, :, 2].mean()), 4),
    )


def summarise(
    cache: KeypointCache,
    keys: Sequence[str],
    settings: ExtractionSettings,
    report: ExtractionReport,
) -> None:
    """Fill the report's per-camera and overall statistics over `keys` present in the cache."""
    by_camera: dict[str, list[np.ndarray]] = {}
    everything: list[np.ndarray] = []
    report.no_person = []
    for key in keys:
        if key not in cache:
            continue
        kp = cache[key]
        by_camera.setdefault(camera_of(key), []).append(kp)
        everything.append(kp)
        if not person_found(kp, settings.min_confidence, settings.min_joints):
            report.no_person.append(key)
    report.per_camera = {cam: _stats(v, settings) for cam, v in sorted(by_camera.items())}
    report.overall = _stats(everything, settings)


def _load_batch(
    root: Path, keys: Sequence[str], on_bad_image: str
) -> tuple[list[str], list[np.ndarray], list[str]]:
    good_keys, images, bad = [], [], []
    for key in keys:
        try:
            images.append(read_image(root / key))
            good_keys.append(key)
        except CorruptImageError as err:
            if on_bad_image == "error":
                raise
            logger.warning("skipping %s", err)
            bad.append(key)
    return good_keys, images, bad


def _batches(keys: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


def open_cache(cache_file: Path, source: str, resume: bool) -> KeypointCache:
    """The cache to extend: the existing one when resuming (same source only), else empty."""
    if resume and cache_file.is_file():
        cache = KeypointCache.load(cache_file)
        if len(cache) and cache.source != source:
            raise CacheSourceMismatchError(
                f"{cache_file} holds {len(cache)} entries from {cache.source!r}, not from "
                f"{source!r}: resuming would mix two backends. Set pose_backend.resume=false to "
                "start over, or write elsewhere with dataset.keypoints=<other file name>"
            )
        cache.source = source
        return cache
    return KeypointCache(path=cache_file, source=source)


def extract_keypoints(
    backend: PoseBackend,
    root: Path,
    cache_file: Path,
    settings: ExtractionSettings,
    *,
    progress: bool = True,
) -> ExtractionReport:
    """Bring `cache_file` up to date with every image under `root`; write and return the report.

    The cache is saved atomically every `settings.checkpoint_every` new entries, at the end,
    and when anything fails (then the error propagates), so a rerun resumes where this one
    stopped.
    """
    root = Path(root)
    cache_file = Path(cache_file)
    report_file = report_path_for(cache_file)
    keys = list_images(root, exclude=(cache_file, report_file))
    if not keys:
        raise FileNotFoundError(
            f"no images (jpg/jpeg/png/bmp) in the folders under dataset root {root}"
        )
    cache = open_cache(cache_file, backend.source, settings.resume)
    todo = [k for k in keys if k not in cache]
    report = ExtractionReport(
        backend=backend.name,
        source=backend.source,
        root=str(root),
        cache=str(cache_file),
        min_confidence=settings.min_confidence,
        min_joints=settings.min_joints,
        images_total=len(keys),
        already_cached=len(keys) - len(todo),
    )
    logger.info(
        "%s: %d images, %d already in %s, %d to do with %s",
        root,
        len(keys),
        report.already_cached,
        cache_file.name,
        len(todo),
        backend.source,
    )

    since_save = 0
    start = time.perf_counter()
    bar = ProgressBar(
        total=len(todo),
        unit="img",
        desc=f"keypoints ({backend.name})",
        disable=not progress,
        dynamic_ncols=True,
    )
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
    try:
        batches = list(_batches(todo, settings.batch_size))
        pending: Future | None = None
        if batches:
            pending = pool.submit(_load_batch, root, batches[0], settings.on_bad_image)
        for index in range(len(batches)):
            assert pending is not None
            batch_keys, images, bad = pending.result()
            # Decode the next batch while the backend works on this one.
            pending = (
                pool.submit(_load_batch, root, batches[index + 1], settings.on_bad_image)
                if index + 1 < len(batches)
                else None
            )
            report.unreadable.extend(bad)
            if images:
                keypoints = backend.predict(images, batch_keys)
                for key, kp in zip(batch_keys, keypoints, strict=True):
                    if np.isnan(kp).any():
                        report.unanswered.append(key)
                        continue
                    cache[key] = kp
                    report.processed += 1
                    since_save += 1
            bar.update(len(batch_keys) + len(bad))
            if since_save >= settings.checkpoint_every:
                cache.save(cache_file)
                since_save = 0
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
        # Also on failure or Ctrl-C: keep every finished image, so a rerun resumes from here.
        if since_save:
            cache.save(cache_file)
    if not cache_file.exists():
        cache.save(cache_file)  # nothing usable was found, but the run did happen
    report.elapsed_s = round(time.perf_counter() - start, 3)
    report.images_per_s = round(report.processed / report.elapsed_s, 2) if report.elapsed_s else 0.0
    summarise(cache, keys, settings, report)
    with atomic_write(report_file, "w", fsync=False) as fh:
        json.dump(report.to_json(), fh, indent=2, sort_keys=False)
        fh.write("\n")
    _log_report(report, report_file)
    return report


def _log_report(report: ExtractionReport, report_file: Path) -> None:
    logger.info(
        "processed %d images in %.1f s (%.1f img/s)",
        report.processed,
        report.elapsed_s,
        report.images_per_s,
    )
    for cam, stats in report.per_camera.items():
        logger.info(
            "  %-10s %6d images  detection rate %.3f  mean confidence %.3f",
            cam,
            stats.images,
            stats.detection_rate,
            stats.mean_confidence,
        )
    overall = report.overall
    logger.info(
        "  %-10s %6d images  detection rate %.3f  mean confidence %.3f",
        "all",
        overall.images,
        overall.detection_rate,
        overall.mean_confidence,
    )
    if report.no_person:
        shown = ", ".join(report.no_person[:_FLAG_LOG_LIMIT])
        more = len(report.no_person) - _FLAG_LOG_LIMIT
        logger.warning(
            "%d images with no confident person (fewer than %d joints >= %.2f): %s%s",
            len(report.no_person),
            report.min_joints,
            report.min_confidence,
            shown,
            f" ... and {more} more" if more > 0 else "",
        )
    for label, items in (("unreadable", report.unreadable), ("unanswered", report.unanswered)):
        if items:
            logger.warning("%d %s images (listed in the report)", len(items), label)
    logger.info("report: %s", report_file)
