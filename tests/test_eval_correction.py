"""Test-time DCMA correction inside `evaluate`: anonymised features lose their modality's offset.

The reference numbers come from features computed here by hand (the model called directly on
the anonymised test images, with and without the `anonymized` mask), so `evaluate` must apply
the correction exactly when `ppa.offsets` is on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from ppa.anonymize import KprAnonymizer
from ppa.config import load_config
from ppa.data import protocols
from ppa.data.keypoints import load_dataset_keypoints
from ppa.data.loader import create_eval_loader
from ppa.data.transforms import normalize
from ppa.device import DeviceSettings
from ppa.eval.evaluate import evaluate
from ppa.eval.metrics import pairwise_distance, sysu_metrics
from ppa.model import PPAEncoder, create_model

from conftest import tiny_overrides


@pytest.fixture(scope="module")
def eval_cfg(tiny_sysu_root: Path, tmp_path_factory: pytest.TempPathFactory) -> DictConfig:
    out = tmp_path_factory.mktemp("eval_correction")
    return load_config(tiny_overrides(tiny_sysu_root, out, "dataset.test.trials=1"))


@pytest.fixture(scope="module")
def model(eval_cfg: DictConfig) -> PPAEncoder:
    """A model whose offsets are large and differ per modality (eval mode, fixed weights)."""
    torch.manual_seed(0)
    net = create_model(eval_cfg.model, protocols.load_train_set(eval_cfg.dataset).num_classes)
    with torch.no_grad():
        net.offsets.visible.copy_(torch.linspace(-2.0, 2.0, net.num_features))
        net.offsets.infrared.copy_(torch.linspace(3.0, -1.0, net.num_features))
    return net.eval()


def hand_anon_map(cfg: DictConfig, net: PPAEncoder, corrected: bool) -> float:
    """anon-anon mAP of the first setting from features computed here, image by image."""
    anonymizer = KprAnonymizer.from_config(cfg)
    setting = protocols.test_settings(cfg.dataset)[0]
    records = [*setting.split.query, *setting.split.gallery]
    loader = create_eval_loader(
        records,
        setting.split.root,
        input_cfg=cfg.input,
        batch_size=16,
        num_workers=0,
        pose_cfg=cfg.pose,
        keypoints=load_dataset_keypoints(setting.split.root),
    )
    feats = []
    with torch.no_grad():
        for batch in loader:
            images = anonymizer(batch.images, batch.keypoints, batch.noise_keys).images
            mask = torch.full_like(batch.labels, corrected, dtype=torch.bool)
            x = normalize(images, tuple(cfg.input.mean), tuple(cfg.input.std))
            feats.append(net(x, batch.modality, anonymized=mask).neck)
    features = torch.cat(feats)
    nq = len(setting.split.query)
    metrics = sysu_metrics(
        pairwise_distance(features[:nq], features[nq:]),
        np.array([r.pid for r in setting.split.query]),
        np.array([r.pid for r in setting.split.gallery]),
        np.array([r.cam for r in setting.split.query]),
        np.array([r.cam for r in setting.split.gallery]),
    )
    return float(metrics["mAP"])


def evaluated_anon_map(cfg: DictConfig, net: PPAEncoder) -> float:
    report = evaluate(
        net,
        cfg,
        device=DeviceSettings.from_config(cfg),
        protocols=["anon-anon"],
        anonymizer=KprAnonymizer.from_config(cfg),
        keypoints=load_dataset_keypoints(cfg.dataset.root),
        progress=False,
    )
    return report.results["anon-anon"]["all"].trials[0]["mAP"]


@pytest.mark.parametrize("offsets", [True, False])
def test_evaluate_corrects_anonymised_features_exactly_when_configured(
    eval_cfg: DictConfig, model: PPAEncoder, offsets: bool
) -> None:
    cfg = OmegaConf.merge(eval_cfg, {"ppa": {"offsets": offsets}})
    corrected = hand_anon_map(cfg, model, corrected=True)
    uncorrected = hand_anon_map(cfg, model, corrected=False)
    # The planted offsets change the ranking, so the two switch positions are told apart.
    assert corrected != pytest.approx(uncorrected, abs=1e-4)
    expected = corrected if offsets else uncorrected
    assert evaluated_anon_map(cfg, model) == pytest.approx(expected, abs=1e-6)
