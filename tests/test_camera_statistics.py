"""Camera statistics at test time (`eval.camera_statistics`): each test camera's images are
normalised with BatchNorm statistics of that camera's images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ppa.config import load_config
from ppa.data.loader import Batch
from ppa.data.records import ImageRecord, Modality
from ppa.device import DeviceSettings
from ppa.eval.camera_statistics import camera_positions, features_with_camera_statistics
from ppa.eval.evaluate import evaluate
from ppa.eval.features import extract_features
from ppa.model import create_model

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
    for flag in ("false", "true", "false"):
        cfg = load_config(
            tiny_overrides(tiny_sysu_root, tmp_path, f"eval.camera_statistics={flag}")
        )
        report = evaluate(model, cfg, device=CPU, protocols=["raw-raw"], progress=False)
        reports.setdefault(flag, []).append(report.headline("raw-raw"))
    off, on = reports["false"], reports["true"]
    assert off[0] == off[1]  # evaluating with camera statistics changed nothing for later
    assert on[0] != off[0]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
