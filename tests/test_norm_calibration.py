"""The statistics round: BatchNorm statistics measured at sites, pooled at the server."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flower_messages import reply_metadata
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from ppa.config import load_config
from ppa.data.loader import Batch
from ppa.data.records import Modality
from ppa.data.transforms import normalize
from ppa.model import create_model
from ppa.model.norm_statistics import (
    measure_norm_statistics,
    norm_statistics_keys,
    pool_norm_statistics,
)
from ppa.wire import global_keys, pack
from server.calibration import NormCalibration

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny_model(num_classes: int = 3):
    torch.manual_seed(0)
    return create_model(load_config(["model=tiny"]).model, num_classes)


def batch(images: torch.Tensor, modality: int) -> Batch:
    n = images.shape[0]
    zeros = torch.zeros(n, dtype=torch.long)
    return Batch(
        images,
        torch.zeros(n, 17, 3),
        zeros,
        torch.full((n,), modality),
        zeros,
        torch.zeros(n, 0, dtype=torch.uint8),
        torch.arange(n),
    )


def test_pooling_is_the_statistics_of_all_images() -> None:
    """Two sites' moments pooled = the moments of their images taken together."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (30, 4)), rng.normal(-3.0, 0.5, (10, 4))
    part = lambda x: ({"bn.running_mean": x.mean(0), "bn.running_var": x.var(0)}, len(x))  # noqa: E731
    pooled = pool_norm_statistics([part(a), part(b)])
    both = np.concatenate([a, b])
    np.testing.assert_allclose(pooled["bn.running_mean"], both.mean(0), rtol=1e-5)
    np.testing.assert_allclose(pooled["bn.running_var"], both.var(0), rtol=1e-5)


def test_measured_statistics_are_those_of_the_data_and_leave_the_model_alone() -> None:
    model = tiny_model()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(6, 3, 64, 32)
    stats, seen = measure_norm_statistics(model, [batch(images, 0)], mean=MEAN, std=STD)
    assert seen == 6
    # The first stem BatchNorm by hand: per-channel moments of conv1's output.
    with torch.no_grad():
        conv = model.stems["visible"].conv1(normalize(images, MEAN, STD))
    np.testing.assert_allclose(
        stats["stems.visible.bn1.running_mean"], conv.mean(dim=(0, 2, 3)).numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        stats["stems.visible.bn1.running_var"],
        conv.var(dim=(0, 2, 3), unbiased=True).numpy(),
        rtol=1e-4,
    )
    # Visible data only: nothing of the infrared stem or BNNeck statistics.
    assert not [k for k in stats if "infrared" in k]
    assert "neck.stats.visible.running_var" in stats
    expected = {k for k in norm_statistics_keys(model) if "infrared" not in k}
    assert set(stats) == expected
    # The model's own statistics and mode are untouched.
    assert not model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_a_group_norm_model_has_no_statistics() -> None:
    cfg = load_config(["model=tiny", "model.norm=group"]).model
    assert norm_statistics_keys(create_model(cfg, 3)) == []


def reply(
    node: int,
    site: str,
    modality: Modality,
    stats: dict,
    images: int,
    error: str | None = None,
    cameras: list[int] | None = None,
) -> Message:
    meta = reply_metadata(node, MessageType.EVALUATE)
    if error is not None:
        return Message(error=Error(code=1, reason=error), metadata=meta)
    identity = {"site": site, "modality": modality.value}
    if cameras is not None:
        identity["cameras"] = cameras
    return Message(
        content=RecordDict(
            {
                "statistics": ArrayRecord({k: Array(np.asarray(v)) for k, v in stats.items()}),
                "metrics": MetricRecord({"num-examples": float(images)}),
                "site": ConfigRecord(identity),
            }
        ),
        metadata=meta,
    )


def test_server_pools_per_group_and_names_bad_replies() -> None:
    model = tiny_model()
    state = model.state_dict()
    current = pack(state, global_keys(state))
    calibration = NormCalibration(norm_statistics_keys(model), images_per_site=8)
    measured = {}
    for modality in (Modality.VISIBLE, Modality.INFRARED):
        images = torch.rand(4, 3, 64, 32)
        measured[modality], _ = measure_norm_statistics(
            model, [batch(images, modality.index)], mean=MEAN, std=STD
        )
    vis, ir = measured[Modality.VISIBLE], measured[Modality.INFRARED]
    negative = {k: (-np.abs(v) - 1 if k.endswith("running_var") else v) for k, v in vis.items()}
    report = calibration.combine(
        [
            reply(1, "cam1", Modality.VISIBLE, vis, 4),
            reply(2, "cam3", Modality.INFRARED, ir, 12),
            reply(3, "cam2", Modality.VISIBLE, ir, 4),  # infrared statistics from a visible site
            reply(4, "cam4", Modality.VISIBLE, negative, 4),
            reply(5, "cam5", Modality.VISIBLE, {}, 0, error="ClientApp raised"),
        ],
        current,
    )
    assert report.sites == ["cam1", "cam3"] and report.images == 16
    failed = " | ".join(report.failed)
    for expected in ("'cam2'", "wrong statistics names", "'cam4'", "negative", "node 5"):
        assert expected in failed
    out = report.statistics
    # A modality's own statistics come from its sites only.
    np.testing.assert_allclose(
        out["neck.stats.visible.running_mean"], vis["neck.stats.visible.running_mean"], rtol=1e-6
    )
    np.testing.assert_allclose(
        out["stems.infrared.bn1.running_var"], ir["stems.infrared.bn1.running_var"], rtol=1e-6
    )
    # Shared ones pool both, weighted by images (1:3).
    key = "trunk.layer1.0.bn1.running_mean"
    np.testing.assert_allclose(out[key], 0.25 * vis[key] + 0.75 * ir[key], rtol=1e-5, atol=1e-6)


def test_calibration_needs_two_images() -> None:
    with pytest.raises(ValueError, match="calibration_images"):
        NormCalibration(["neck.stats.visible.running_mean"], images_per_site=1)


def test_one_camera_sites_are_also_kept_per_camera() -> None:
    """per_camera: a one-camera site's statistics under its camera, two sites of one camera
    pooled by images; a site whose sample mixes cameras or that names none is pooled only."""
    model = tiny_model()
    state = model.state_dict()
    current = pack(state, global_keys(state))
    calibration = NormCalibration(norm_statistics_keys(model), images_per_site=8)
    torch.manual_seed(2)
    images = [torch.rand(4, 3, 64, 32) * scale for scale in (1.0, 0.5, 2.0, 3.0)]
    measured = [
        measure_norm_statistics(model, [batch(x, 0)], mean=MEAN, std=STD)[0] for x in images
    ]
    report = calibration.combine(
        [
            reply(1, "a", Modality.VISIBLE, measured[0], 4, cameras=[1]),
            reply(2, "b", Modality.VISIBLE, measured[1], 12, cameras=[2]),
            reply(3, "c", Modality.VISIBLE, measured[2], 4, cameras=[2]),
            reply(4, "d", Modality.VISIBLE, measured[3], 4, cameras=[1, 4]),
            reply(5, "e", Modality.VISIBLE, measured[3], 4),
        ],
        current,
    )
    assert report.sites == ["a", "b", "c", "d", "e"]
    assert sorted(report.per_camera) == [1, 2] and report.summary()["cameras"] == [1, 2]
    key = "trunk.layer1.0.bn1.running_mean"
    np.testing.assert_allclose(report.per_camera[1][key], measured[0][key], rtol=1e-6)
    np.testing.assert_allclose(
        report.per_camera[2][key],
        0.75 * measured[1][key] + 0.25 * measured[2][key],
        rtol=1e-5,
        atol=1e-6,
    )
    # The global statistics still pool every site.
    assert not np.allclose(report.statistics[key], report.per_camera[1][key])
