"""The federation wire format: which arrays travel, their names, packing and validation, and
the names of every record, record key and node-config key a message carries.

Shared between `server/` and `client/` (and nothing else of theirs): a site's update holds
the shared parts (trunk, GeM, BNNeck, classifier), its own modality's stem and its own
modality's DCMA offset; identity prototypes travel as per-modality sums and counts.

Names are the encoder's state-dict keys:
- ``stems.<modality>.*``   -> group ("stem", modality)
- ``offsets.<modality>``   -> group ("offset", modality)
- everything else          -> group ("shared", None)
BatchNorm's ``num_batches_tracked`` counters stay local (they only matter with momentum=None).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ppa.anonymize.factory import anonymizer_class
from ppa.data.records import Modality

SHARED = "shared"
STEM = "stem"  # modality-specific parts: the stems and the BNNeck's per-modality statistics
# `<norm>.stats.<modality>.*`: a norm's statistics kept per modality (STEM group).
STATS_SEGMENT = "stats"
MODALITY_NAMES = frozenset(m.value for m in Modality)
OFFSET = "offset"
PROTO_SUM = "proto-sum"
PROTO_COUNT = "proto-count"
TRANSPORT_DTYPES = {"float32": np.float32, "float16": np.float16}
VARIANCE_SUFFIX = "running_var"  # BatchNorm variances: never negative
# Error code of a training reply from a site that is out of its DP budget (Flower's own error
# codes are 0..8): the server stops sampling that site instead of counting a failure.
BUDGET_EXHAUSTED_CODE = 100


# The records of a message (RecordDict keys) --------------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: model arrays under their state-dict names
CONFIG = "config"  # ConfigRecord: the round's instructions (server -> site)
METRICS = "metrics"  # MetricRecord: a reply's numbers
PROTOTYPES = "prototypes"  # ArrayRecord: PROTO_SUM / PROTO_COUNT (server -> site: per modality)
SITE = "site"  # ConfigRecord: who replied (SITE_NAME, SITE_MODALITY)
STATISTICS = "statistics"  # ArrayRecord: BatchNorm statistics of the statistics round
CONTROL = "control"  # ArrayRecord: SCAFFOLD's global control variate c (server -> site)
CONTROL_DELTA = "control-delta"  # ArrayRecord: a site's c_i+ - c_i (site -> server)

# Keys inside the records ---------------------------------------------------------------------
SERVER_ROUND = "server-round"
LOCAL_EPOCHS = "local-epochs"
HALF_PRECISION = "half-precision"
CALIBRATION_IMAGES = "calibration-images"
NUM_EXAMPLES = "num-examples"
SITE_NAME = "site"
SITE_MODALITY = "modality"
# Statistics-round replies: the cameras of the images measured (the server keeps the statistics
# of a one-camera site per camera, for eval.camera_statistics=training).
SITE_CAMERAS = "cameras"


def site_identity(name: str, modality: Modality) -> dict[str, str]:
    """The SITE record of a reply."""
    return {SITE_NAME: name, SITE_MODALITY: modality.value}


class MalformedUpdateError(ValueError):
    """A site's reply that must not reach the global model."""


@dataclass(frozen=True)
class ParameterGroup:
    kind: str  # shared | stem | offset
    modality: Modality | None = None


def parameter_group(name: str) -> ParameterGroup:
    """Which aggregation group a state-dict key belongs to."""
    head, _, rest = name.partition(".")
    if head in ("stems", "offsets") and rest:
        modality = Modality.parse(rest.split(".", 1)[0])
        return ParameterGroup(STEM if head == "stems" else OFFSET, modality)
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == STATS_SEGMENT and parts[i + 1] in MODALITY_NAMES:
            # Per-modality normalisation statistics (the BNNeck, ppa/model/neck.py; the trunk's
            # norms, ppa/model/modality_norm.py): aggregated within the modality, like a stem.
            return ParameterGroup(STEM, Modality.parse(parts[i + 1]))
    return ParameterGroup(SHARED)


def travels(name: str) -> bool:
    """Whether a state-dict entry is part of the federation at all."""
    return not name.endswith("num_batches_tracked")


def global_keys(state: Mapping[str, object]) -> list[str]:
    """Keys the server sends: every travelling entry (both modalities' stems and offsets)."""
    return [k for k in state if travels(k)]


def site_keys(state: Mapping[str, object], modality: Modality) -> list[str]:
    """Keys a site of `modality` sends back: shared parts + its own stem and offset."""
    keys = []
    for k in global_keys(state):
        group = parameter_group(k)
        if group.kind == SHARED or group.modality == modality:
            keys.append(k)
    return keys


def pack(
    state: Mapping[str, torch.Tensor], keys: Iterable[str], half_precision: bool = False
) -> dict[str, np.ndarray]:
    """State-dict entries -> numpy arrays for an ArrayRecord (fp16 floats when asked)."""
    out: dict[str, np.ndarray] = {}
    for k in keys:
        arr = state[k].detach().cpu().numpy()
        if half_precision and np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float16)
        out[k] = np.ascontiguousarray(arr)
    return out


def unpack_into(
    state: Mapping[str, torch.Tensor], arrays: Mapping[str, np.ndarray]
) -> dict[str, torch.Tensor]:
    """A full state dict: `state` with `arrays` (any float width) written over it, dtypes kept."""
    merged = dict(state)
    for k, arr in arrays.items():
        merged[k] = torch.from_numpy(np.asarray(arr).copy()).to(state[k].dtype)
    return merged


def validate_update(
    arrays: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    modality: Modality,
    site: str,
) -> None:
    """Reject a reply whose arrays are not exactly what a `modality` site must send.

    Checks names (no more, no less), shapes, float dtypes and finiteness; the error names the
    site and the first offending key.
    """
    expected = set(site_keys(reference, modality))
    got = set(arrays)
    if got != expected:
        missing = sorted(expected - got)[:3]
        extra = sorted(got - expected)[:3]
        raise MalformedUpdateError(
            f"site {site!r} ({modality.value}): wrong array names "
            f"(missing {missing}, unexpected {extra})"
        )
    for k in sorted(expected):
        arr = np.asarray(arrays[k])
        ref = np.asarray(reference[k])
        if tuple(arr.shape) != tuple(ref.shape):
            raise MalformedUpdateError(
                f"site {site!r}: array {k!r} has shape {tuple(arr.shape)}, "
                f"expected {tuple(ref.shape)}"
            )
        if np.issubdtype(ref.dtype, np.floating):
            if not np.issubdtype(arr.dtype, np.floating):
                raise MalformedUpdateError(
                    f"site {site!r}: array {k!r} has dtype {arr.dtype}, expected a float"
                )
            if not np.isfinite(arr).all():
                raise MalformedUpdateError(f"site {site!r}: array {k!r} has NaN/Inf values")
            if k.endswith(VARIANCE_SUFFIX) and (arr < 0).any():
                raise MalformedUpdateError(f"site {site!r}: array {k!r} has negative variances")


def check_global(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Problems that make a set of global arrays unusable (empty list: fine)."""
    problems = []
    for k, v in arrays.items():
        arr = np.asarray(v)
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            problems.append(f"{k} has NaN/Inf values")
        elif k.endswith(VARIANCE_SUFFIX) and (arr < 0).any():
            problems.append(f"{k} has negative variances")
    return problems


def validate_prototypes(
    sums: np.ndarray, counts: np.ndarray, num_classes: int, dim: int, site: str
) -> None:
    """Prototype sums (C, D) and counts (C,) of one site."""
    if sums.shape != (num_classes, dim) or counts.shape != (num_classes,):
        raise MalformedUpdateError(
            f"site {site!r}: prototypes {sums.shape}/{counts.shape}, expected "
            f"({num_classes}, {dim})/({num_classes},)"
        )
    if not (np.isfinite(sums).all() and np.isfinite(counts).all()) or (counts < 0).any():
        raise MalformedUpdateError(f"site {site!r}: prototypes have NaN/Inf or negative counts")


def check_federated_anonymizer(cfg: Any) -> None:
    """Refuse a trained anonymiser (``learned``, ``secure_reid``) in a federation: its weights
    are not among the arrays that travel, so each site would train its own and the server would
    evaluate with a randomly initialised one. Pixel anonymisers (mosaic, blur, noise) need no
    weights."""
    anonymizer = cfg.anonymizer.get("name")
    if anonymizer_class(cfg.anonymizer).trainable and cfg.ppa.get("anonymized_view", False):
        raise ValueError(
            f"anonymizer={anonymizer} is not supported in a federation: its networks are neither "
            "trained jointly by the sites nor sent to the server. Use anonymizer=mosaic, blur or "
            "noise, or train the learned anonymiser centrally (ppa-train)"
        )
