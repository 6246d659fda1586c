"""The statistics round: re-measure the global model's BatchNorm statistics at the sites.

See ppa/model/norm_statistics.py for why. After a round's aggregate is accepted and before it is
evaluated, the server sends the global arrays to the connected sites as an EVALUATE message;
each replies with the BatchNorm statistics of that model on a sample of its images; the
server pools them (shared BatchNorms over all sites, a modality's stem and BNNeck statistics
over that modality's sites) and they replace the averaged statistics in the global model.
The replies of sites that measured one camera's images are also pooled per camera
(`CalibrationReport.per_camera`): the statistics eval.camera_statistics=training normalises
each test camera with (ppa/eval/camera_statistics.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from ppa.data.records import Modality
from ppa.model.norm_statistics import VAR_SUFFIX, pool_norm_statistics
from ppa.wire import (
    ARRAYS,
    CALIBRATION_IMAGES,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    SERVER_ROUND,
    SHARED,
    SITE,
    SITE_CAMERAS,
    SITE_MODALITY,
    SITE_NAME,
    STATISTICS,
    MalformedUpdateError,
    parameter_group,
)

logger = logging.getLogger(__name__)


@dataclass
class CalibrationReport:
    """What one statistics round produced."""

    statistics: dict[str, np.ndarray] = field(default_factory=dict)
    # camera -> statistics pooled over the sites whose sample held that camera only
    per_camera: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    sites: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    images: int = 0

    def summary(self) -> dict:
        return {
            "sites": self.sites,
            "failed": self.failed,
            "images": self.images,
            "cameras": sorted(self.per_camera),
        }


class NormCalibration:
    """Builds the statistics-round messages and pools the replies."""

    def __init__(self, statistics_keys: Iterable[str], images_per_site: int):
        self.keys = list(statistics_keys)
        if images_per_site < 2:
            raise ValueError(
                f"federation.calibration_images must be >= 2 (BatchNorm needs two samples "
                f"per batch), got {images_per_site}"
            )
        self.images_per_site = int(images_per_site)

    def expected_keys(self, modality: Modality) -> set[str]:
        """Statistics a site of `modality` measures: shared ones and its own modality's."""
        out = set()
        for k in self.keys:
            group = parameter_group(k)
            if group.kind == SHARED or group.modality == modality:
                out.add(k)
        return out

    def messages(
        self, server_round: int, arrays: Mapping[str, np.ndarray], nodes: Iterable[int]
    ) -> list[Message]:
        content = RecordDict(
            {
                ARRAYS: ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                CONFIG: ConfigRecord(
                    {SERVER_ROUND: server_round, CALIBRATION_IMAGES: self.images_per_site}
                ),
            }
        )
        return [
            Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=n)
            for n in nodes
        ]

    def combine(
        self, replies: Iterable[Message], current: Mapping[str, np.ndarray]
    ) -> CalibrationReport:
        """Validate each reply (names, shapes, finite values, variances >= 0) and pool the
        valid ones per BatchNorm; a malformed or failed reply is dropped with its site named."""
        report = CalibrationReport()
        parts: list[tuple[str, dict[str, np.ndarray], float, list[int]]] = []
        for msg in replies:
            if msg.has_error():
                report.failed.append(f"node {msg.metadata.src_node_id}: {msg.error.reason}")
                continue
            try:
                site, stats, images, cameras = self._parse(msg, current)
            except (MalformedUpdateError, KeyError, ValueError, TypeError) as err:
                report.failed.append(str(err))
                continue
            parts.append((site, stats, float(images), cameras))
            report.images += images
        for reason in report.failed:
            logger.warning("statistics round: dropped %s", reason)
        # Pooled in site order, not reply order: floating-point sums must not depend on which
        # site answered first, or two runs of the same seed drift apart.
        parts.sort(key=lambda part: part[0])
        report.sites = [site for site, _, _, _ in parts]
        if parts:
            report.statistics = pool_norm_statistics([(stats, n) for _, stats, n, _ in parts])
        by_camera: dict[int, list[tuple[dict[str, np.ndarray], float]]] = {}
        for _, stats, n, cameras in parts:
            if len(cameras) == 1:  # a mixed sample says nothing about one camera
                by_camera.setdefault(cameras[0], []).append((stats, n))
        report.per_camera = {c: pool_norm_statistics(p) for c, p in sorted(by_camera.items())}
        return report

    def _parse(
        self, msg: Message, current: Mapping[str, np.ndarray]
    ) -> tuple[str, dict[str, np.ndarray], int, list[int]]:
        info = msg.content.config_records[SITE]
        site = str(info[SITE_NAME])
        modality = Modality.parse(str(info[SITE_MODALITY]))
        # Absent from a site that does not say (an older client): pooled, never per camera.
        cameras = sorted({int(c) for c in info.get(SITE_CAMERAS, [])})
        images = int(msg.content.metric_records[METRICS][NUM_EXAMPLES])
        if images < 1:
            raise MalformedUpdateError(f"site {site!r}: statistics over {images} images")
        stats = {k: v.numpy() for k, v in msg.content.array_records[STATISTICS].items()}
        expected = self.expected_keys(modality)
        if set(stats) != expected:
            raise MalformedUpdateError(
                f"site {site!r} ({modality.value}): wrong statistics names (missing "
                f"{sorted(expected - set(stats))[:3]}, unexpected "
                f"{sorted(set(stats) - expected)[:3]})"
            )
        for k, arr in stats.items():
            if arr.shape != np.shape(current[k]) or not np.isfinite(arr).all():
                raise MalformedUpdateError(
                    f"site {site!r}: statistics {k!r} of shape {arr.shape} (expected "
                    f"{np.shape(current[k])}) or not finite"
                )
            if k.endswith(VAR_SUFFIX) and (arr < 0).any():
                raise MalformedUpdateError(f"site {site!r}: statistics {k!r} are negative")
        return site, stats, images, cameras
