"""Camera statistics at test time (`eval.camera_statistics`): each test camera's images are
normalised with BatchNorm statistics of that camera's images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ppa.config import load_config
from ppa.data import protocols
from ppa.data.loader import Batch, create_eval_loader
from ppa.data.records import ImageRecord, Modality
from ppa.device import DeviceSettings
from ppa.eval import evaluate as evaluation
from ppa.eval.camera_statistics import (
    camera_positions,
    camera_statistics_source,
    features_with_camera_statistics,
    training_camera_statistics,
)
from ppa.eval.evaluate import evaluate
from ppa.eval.features import extract_features
from ppa.model import create_model
from ppa.model.norm_statistics import measure_norm_statistics

from conftest import tiny_overrides

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CPU = DeviceSettings(torch.device("cpu"))
CONTRAST = 0.4  # camera 2 shows camera 1's images at this contrast around the mean


def tiny_model(trunk_stats: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = load_config(["model=tiny", f"model.trunk_stats={trunk_stats}"])
    model = create_model(cfg.model, 3)
    # Running statistics that describe neither camera (as after training elsewhere).
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1.0, 1.0)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def two_cameras(n: int = 6) -> tuple[list[ImageRecord], dict[str, torch.Tensor]]:
    """Records interleaved cam1, cam2, cam1, ...; camera 2 holds camera 1's images at lower
    contrast, so after input normalisation its images are exactly CONTRAST x camera 1's."""
    torch.manual_seed(1)
    base = torch.rand(n, 3, 32, 16)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    low = mean + CONTRAST * (base - mean)
    records, images = [], {}
    for i in range(n):
        for cam, pixels in ((1, base[i]), (2, low[i])):
            record = ImageRecord(f"cam{cam}/{i:04d}.jpg", i, cam, Modality.VISIBLE)
            records.append(record)
            images[record.path] = pixels
    return records, images


def loader_for(images: dict[str, torch.Tensor]):
    def make(records):
        n = len(records)
        return [
            Batch(
                torch.stack([images[r.path] for r in records]),
                torch.zeros(n, 17, 3),
                torch.tensor([r.pid for r in records]),
                torch.tensor([r.modality.index for r in records]),
                torch.tensor([r.cam for r in records]),
                torch.zeros(n, 0, dtype=torch.uint8),
                torch.arange(n),
            )
        ]

    return make


def extractor(model):
    def extract(loader):
        return extract_features(model, loader, device=CPU, mean=MEAN, std=STD, progress=False)

    return extract


def test_camera_positions_keep_first_appearance_order() -> None:
    records = [ImageRecord(str(i), i, cam, Modality.VISIBLE) for i, cam in enumerate([3, 1, 3, 2])]
    assert camera_positions(records) == {3: [0, 2], 1: [1], 2: [3]}


@pytest.mark.parametrize("trunk_stats", ["shared", "modality"])
def test_a_camera_contrast_change_disappears_with_its_own_statistics(trunk_stats: str) -> None:
    model = tiny_model(trunk_stats)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    records, images = two_cameras()
    load, extract = loader_for(images), extractor(model)

    plain = extract(load(records))["raw"]
    per_camera = features_with_camera_statistics(model, records, load, extract, mean=MEAN, std=STD)[
        "raw"
    ]

    cam1, cam2 = slice(0, None, 2), slice(1, None, 2)
    # The first convolution scales with its input and each camera's BatchNorm statistics
    # remove that scale, so both cameras' images of one person get one feature.
    assert torch.allclose(per_camera.features[cam1], per_camera.features[cam2], atol=1e-3)
    # With one set of statistics the contrast change stays in the features.
    assert not torch.allclose(plain.features[cam1], plain.features[cam2], atol=1e-1)
    # Rows come back in the records' order, labels with them.
    assert per_camera.pids.tolist() == [r.pid for r in records]
    assert per_camera.cams.tolist() == [r.cam for r in records]
    # The statistics were measured on the images themselves, not taken from the model.
    assert not torch.allclose(per_camera.features[cam1], plain.features[cam1], atol=1e-1)
    # ... and the model is left as it was.
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_features_do_not_depend_on_the_order_of_the_records() -> None:
    model = tiny_model("modality")
    records, images = two_cameras()
    records = [r for r in records if r.cam == 1]
    load, extract = loader_for(images), extractor(model)
    per_camera = features_with_camera_statistics(model, records, load, extract, mean=MEAN, std=STD)
    again = features_with_camera_statistics(model, records[::-1], load, extract, mean=MEAN, std=STD)
    assert torch.allclose(per_camera["raw"].features, again["raw"].features.flip(0), atol=1e-5)


def test_evaluate_normalises_per_camera_only_when_configured(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    """`eval.camera_statistics` reaches the one evaluation path: off, the model's own statistics
    (numbers unchanged); on, each camera's, which moves the numbers of a model whose running
    statistics describe no camera; either way the model is left as it was."""
    model = tiny_model("modality")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reports = {}
    for flag in ("none", "test", "none"):
        cfg = load_config(
            tiny_overrides(tiny_sysu_root, tmp_path, f"eval.camera_statistics={flag}")
        )
        report = evaluate(model, cfg, device=CPU, protocols=["raw-raw"], progress=False)
        reports.setdefault(flag, []).append(report.headline("raw-raw"))
    off, on = reports["none"], reports["test"]
    assert off[0] == off[1]  # evaluating with camera statistics changed nothing for later
    assert on[0] != off[0]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("value", "source"),
    [("none", "none"), ("test", "test"), ("training", "training"), (True, "test"), (False, "none")],
)
def test_camera_statistics_setting_reads_old_and_new_values(value, source) -> None:
    cfg = load_config([f"eval.camera_statistics={str(value).lower()}"])
    assert camera_statistics_source(cfg) == source


def test_auto_camera_statistics_are_training_only_after_a_training_mode_statistics_round() -> None:
    """auto: the demo's setting; a centralised model or any evaluation outside a federation with
    a training-mode statistics round keeps one set of statistics per modality."""
    cfg = load_config(["eval.camera_statistics=auto"])
    assert camera_statistics_source(cfg) == "none"
    assert camera_statistics_source(cfg, training_mode_statistics_round=True) == "training"
    demo = load_config(["experiment=demo"])
    assert camera_statistics_source(demo) == "none"
    for explicit in ("none", "test", "training"):
        cfg = load_config([f"eval.camera_statistics={explicit}"])
        assert camera_statistics_source(cfg, training_mode_statistics_round=True) == explicit


def test_unknown_camera_statistics_setting_is_refused() -> None:
    with pytest.raises(ValueError, match=r"eval\.camera_statistics='sites'"):
        camera_statistics_source(load_config(["eval.camera_statistics=sites"]))


def test_given_statistics_are_used_and_missing_cameras_keep_the_models_own() -> None:
    """statistics={camera: ...}: a camera given the statistics of its own images gets exactly
    the measured-per-camera features; a camera not given any gets the model's plain ones."""
    model = tiny_model("modality")
    records, images = two_cameras()
    load, extract = loader_for(images), extractor(model)
    measured = features_with_camera_statistics(model, records, load, extract, mean=MEAN, std=STD)
    cam1 = [r for r in records if r.cam == 1]
    stats1, _ = measure_norm_statistics(model, load(cam1), mean=MEAN, std=STD, mode="train")
    given = features_with_camera_statistics(
        model, records, load, extract, mean=MEAN, std=STD, statistics={1: stats1}
    )["raw"]
    plain = extract(load(records))["raw"]
    rows1, rows2 = slice(0, None, 2), slice(1, None, 2)
    assert torch.allclose(given.features[rows1], measured["raw"].features[rows1], atol=1e-5)
    assert torch.allclose(given.features[rows2], plain.features[rows2], atol=1e-5)
    assert not torch.allclose(given.features[rows2], measured["raw"].features[rows2], atol=1e-1)


def test_training_camera_statistics_measure_each_training_camera(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    """One entry per training camera, each the training-mode statistics of a sample of that
    camera's training images (different cameras, different numbers); the model unchanged."""
    cfg = load_config(tiny_overrides(tiny_sysu_root, tmp_path, "federation.calibration_images=4"))
    model = tiny_model("modality")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = training_camera_statistics(model, cfg)
    cameras = sorted({r.cam for r in protocols.load_train_set(cfg.dataset).records})
    assert sorted(stats) == cameras
    visible = [c for c in cameras if "stems.visible.bn1.running_mean" in stats[c]]
    assert len(visible) >= 2
    key = "trunk.layer1.0.bn1.stats.visible.running_mean"
    assert not np.allclose(stats[visible[0]][key], stats[visible[1]][key])
    # Visible cameras reach the visible stem only, infrared cameras the infrared one.
    stems = {c: {k.split(".")[1] for k in s if k.startswith("stems.")} for c, s in stats.items()}
    assert all(len(names) == 1 for names in stems.values())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_evaluate_with_training_statistics_uses_the_given_ones(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    """eval.camera_statistics=training with each camera's statistics of its *test* images given
    reproduces eval.camera_statistics=test exactly; with none given (a centralised model) the
    training images' are measured, which are different numbers."""
    model = tiny_model("modality")
    base = tiny_overrides(tiny_sysu_root, tmp_path)
    test_cfg = load_config([*base, "eval.camera_statistics=test"])
    train_cfg = load_config([*base, "eval.camera_statistics=training"])
    settings = protocols.test_settings(test_cfg.dataset)
    records = evaluation.TestImages.from_settings(settings).records
    root = settings[0].split.root
    per_camera = {}
    for cam, positions in camera_positions(records).items():
        loader = create_eval_loader(
            [records[i] for i in positions],
            root,
            input_cfg=test_cfg.input,
            batch_size=int(test_cfg.eval.batch_size),
            num_workers=0,
            pose_cfg=test_cfg.pose,
            keypoints=None,
            on_bad_image="error",
        )
        per_camera[cam], _ = measure_norm_statistics(
            model,
            loader,
            mean=tuple(test_cfg.input.mean),
            std=tuple(test_cfg.input.std),
            mode="train",
        )
    run = lambda cfg, **kw: evaluate(  # noqa: E731
        model, cfg, device=CPU, protocols=["raw-raw"], progress=False, **kw
    ).headline("raw-raw")
    assert run(train_cfg, camera_statistics=per_camera) == run(test_cfg)
    assert run(train_cfg) != run(test_cfg)
