"""Camera-based normalisation at test time (``eval.camera_statistics``).

Why: a site of the by-camera federation holds one camera, so while it trains every
BatchNorm normalises with that camera's batch statistics: the trunk never has to remove a
camera's own mean and scale, just as it never had to remove a modality's before the
statistics became per modality (`ppa.model.modality_norm`). Statistics pooled over a
modality's cameras then leave each camera's offset in the retrieval space: the federated
model retrieves well within a camera and poorly across cameras (docs/results.md measures it).

With this option each test camera's images are normalised with BatchNorm statistics measured
on that camera's test images, the way training normalised them (training-mode statistics,
`ppa.model.norm_statistics.measure_norm_statistics`): the test-time step of camera-based
BatchNorm (Zhuang et al., ECCV 2020). No labels are used, but the test images are read twice
and their statistics shape their features, so numbers with it are a protocol setting of their
own and are reported apart from the literature-comparable ones. The model is left as it was.

``eval.camera_statistics=training`` takes each camera's statistics from that camera's
*training* images instead, which needs no test image: in a federation, the statistics round's
replies of the sites that hold one camera each (the server keeps them per camera,
server/calibration.py); for a centralised model, a sample of every training camera's images
(`training_camera_statistics`). A test camera without training statistics keeps the model's
own.

``eval.camera_statistics=auto`` (the demo's) is ``training`` where the model was trained on
one-camera batches and its statistics round measures as training normalised (a federation's
central evaluation with a training-mode statistics round), ``none`` everywhere else: a
centralised model, trained on batches mixing a modality's cameras, scores higher with one set
per modality (docs/results.md), and a DP federation has no statistics round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields

import numpy as np
import torch
from omegaconf import DictConfig

from ppa.data.loader import Batch, create_statistics_loader
from ppa.data.protocols import load_train_set
from ppa.data.records import ImageRecord
from ppa.eval.features import FeatureSet
from ppa.model import PPAEncoder
from ppa.model.norm_statistics import measure_norm_statistics, norm_statistics_keys

# eval.camera_statistics: none (one set of statistics per modality, the SYSU/RegDB protocol),
# test (each test camera's own test images), training (each camera's training images), auto
# (training in a federation with a training-mode statistics round, none elsewhere).
CAMERA_STATISTICS_SOURCES = ("none", "test", "training", "auto")
# camera id -> BatchNorm statistics (state-dict key -> array) measured on that camera's images
CameraStatistics = Mapping[int, Mapping[str, np.ndarray]]


def camera_statistics_source(
    cfg: DictConfig, *, training_mode_statistics_round: bool = False
) -> str:
    """`eval.camera_statistics` resolved to none, test or training (true/false, as earlier
    configurations wrote it, read as test/none); ``auto`` is training only where the caller is a
    federation whose statistics round measures in training mode."""
    value = cfg.eval.get("camera_statistics", "none")
    if isinstance(value, bool) or value is None:
        return "test" if value else "none"
    if str(value) not in CAMERA_STATISTICS_SOURCES:
        raise ValueError(
            f"eval.camera_statistics={value!r}: expected one of {CAMERA_STATISTICS_SOURCES}"
        )
    if value == "auto":
        return "training" if training_mode_statistics_round else "none"
    return str(value)


def camera_positions(records: Sequence[ImageRecord]) -> dict[int, list[int]]:
    """Positions of each camera's records, cameras in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(int(record.cam), []).append(i)
    return groups


def _in_order(
    parts: Sequence[dict[str, FeatureSet]], order: Sequence[int]
) -> dict[str, FeatureSet]:
    """Concatenate per-camera feature sets and put row j back at position order[j]."""
    where = torch.empty(len(order), dtype=torch.long)
    where[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    out = {}
    for view in parts[0]:
        sets = [part[view] for part in parts]
        out[view] = FeatureSet(
            *(torch.cat([getattr(s, f.name) for s in sets])[where] for f in fields(FeatureSet))
        )
    return out


def features_with_camera_statistics(
    model: PPAEncoder,
    records: Sequence[ImageRecord],
    loader_for: Callable[[Sequence[ImageRecord]], Iterable[Batch]],
    extract: Callable[[Iterable[Batch]], dict[str, FeatureSet]],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    statistics: CameraStatistics | None = None,
) -> dict[str, FeatureSet]:
    """Features of `records` (in their order), each camera's extracted by `extract` while every
    BatchNorm holds that camera's statistics: `statistics[camera]` when given (norms it does not
    name, and cameras it lacks, keep the model's own), else measured on the camera's raw
    images (read through `loader_for`)."""
    if not records:
        raise ValueError("features_with_camera_statistics: no records")
    buffers = model.state_dict()
    keys = norm_statistics_keys(model)
    original = {k: buffers[k].clone() for k in keys}
    parts, order = [], []
    try:
        for camera, positions in camera_positions(records).items():
            loader = loader_for([records[i] for i in positions])
            if statistics is None:
                measured, _ = measure_norm_statistics(
                    model, loader, mean=mean, std=std, device=device, mode="train"
                )
            else:
                measured = statistics.get(camera, {})
            for key in keys:
                buffers[key].copy_(original[key])
            for key, value in measured.items():
                buffers[key].copy_(torch.as_tensor(np.asarray(value), dtype=buffers[key].dtype))
            parts.append(extract(loader))
            order.extend(positions)
    finally:
        for key in keys:
            buffers[key].copy_(original[key])
    return _in_order(parts, order)


def training_camera_statistics(
    model: PPAEncoder, cfg: DictConfig, *, device: torch.device | str = "cpu"
) -> dict[int, dict[str, np.ndarray]]:
    """Each training camera's BatchNorm statistics of `model`, measured as a site of that camera
    measures them in the statistics round (`federation.calibration_images` raw images, batches
    of a training batch's size, training mode: the only mode the federation keeps them in): the
    centralised counterpart of what a federation's server keeps per camera."""
    train = load_train_set(cfg.dataset)
    per_camera = camera_positions(train.records)
    rng = np.random.default_rng(int(cfg.seed))
    limit = int(cfg.federation.calibration_images)
    out: dict[int, dict[str, np.ndarray]] = {}
    for camera in sorted(per_camera):
        positions = per_camera[camera]
        chosen = sorted(rng.choice(positions, size=min(limit, len(positions)), replace=False))
        loader = create_statistics_loader([train.records[i] for i in chosen], train.root, cfg)
        out[camera], _ = measure_norm_statistics(
            model,
            loader,
            mean=tuple(cfg.input.mean),
            std=tuple(cfg.input.std),
            device=device,
            mode="train",
        )
    return out
