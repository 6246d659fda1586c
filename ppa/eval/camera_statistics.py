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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields

import torch

from ppa.data.loader import Batch
from ppa.data.records import ImageRecord
from ppa.eval.features import FeatureSet
from ppa.model import PPAEncoder
from ppa.model.norm_statistics import measure_norm_statistics, norm_statistics_keys


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
) -> dict[str, FeatureSet]:
    """Features of `records` (in their order), each camera's extracted by `extract` while every
    BatchNorm holds the statistics of that camera's raw images (read through `loader_for`)."""
    if not records:
        raise ValueError("features_with_camera_statistics: no records")
    buffers = model.state_dict()
    keys = norm_statistics_keys(model)
    original = {k: buffers[k].clone() for k in keys}
    parts, order = [], []
    try:
        for positions in camera_positions(records).values():
            loader = loader_for([records[i] for i in positions])
            measured, _ = measure_norm_statistics(
                model, loader, mean=mean, std=std, device=device, mode="train"
            )
            for key, value in measured.items():
                buffers[key].copy_(torch.from_numpy(value))
            # A camera's statistics stay until the next camera's overwrite them: both pass
            # through the same norms, and norms one camera does not reach do not touch its rows.
            parts.append(extract(loader))
            order.extend(positions)
    finally:
        for key in keys:
            buffers[key].copy_(original[key])
    return _in_order(parts, order)
