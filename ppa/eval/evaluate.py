"""The one evaluation code path (the evaluation command, the ServerApp, the privacy report).

Features of every test image are extracted once per view (raw / anonymised) and reused by
all trials, modes and privacy protocols.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ppa.anonymize import KprAnonymizer
from ppa.anonymize.factory import noise_keys_for
from ppa.data.keypoints import KeypointCache
from ppa.data.leakage import check_trained_on
from ppa.data.loader import Batch, create_eval_loader
from ppa.data.noise_keys import EVALUATOR, NoiseKeys
from ppa.data.protocols import DatasetProtocol, TestSetting, dataset_protocol, test_settings
from ppa.data.records import ImageRecord
from ppa.device import DeviceSettings
from ppa.eval.camera_statistics import (
    CameraStatistics,
    camera_statistics_source,
    features_with_camera_statistics,
    training_camera_statistics,
)
from ppa.eval.features import VIEWS, FeatureSet, extract_features
from ppa.eval.metrics import pairwise_distance, regdb_metrics, sysu_metrics
from ppa.eval.report import EvaluationReport, GroupResult
from ppa.eval.reranking import RerankSettings, rerank_distance
from ppa.model import PPAEncoder

logger = logging.getLogger(__name__)

# Privacy protocols: (query view, gallery view).
PRIVACY_PROTOCOLS: dict[str, tuple[str, str]] = {
    "raw-raw": ("raw", "raw"),
    "anon-anon": ("anon", "anon"),
    "raw-anon": ("raw", "anon"),
}
REPORTED_RANKS = (1, 5, 10, 20)


def _pids(records: Sequence[ImageRecord]) -> np.ndarray:
    return np.array([r.pid for r in records])


def _cams(records: Sequence[ImageRecord]) -> np.ndarray:
    return np.array([r.cam for r in records])


# Retrieval rules by `DatasetProtocol.metrics`: (distances, query, gallery, max_rank) -> metrics.
RETRIEVAL_RULES: dict[str, Callable[..., dict]] = {
    "sysu": lambda dist, q, g, max_rank: sysu_metrics(
        dist, _pids(q), _pids(g), _cams(q), _cams(g), max_rank=max_rank
    ),
    "regdb": lambda dist, q, g, max_rank: regdb_metrics(
        dist, _pids(q), _pids(g), max_rank=max_rank
    ),
}


@dataclass(frozen=True)
class TestImages:
    """The distinct images of all test settings, and where each setting's images sit in it."""

    records: list[ImageRecord]
    index: dict[str, int]

    @classmethod
    def from_settings(cls, settings: Sequence[TestSetting]) -> TestImages:
        records: list[ImageRecord] = []
        index: dict[str, int] = {}
        for setting in settings:
            for rec in (*setting.split.query, *setting.split.gallery):
                if rec.path not in index:
                    index[rec.path] = len(records)
                    records.append(rec)
        return cls(records, index)

    def positions(self, records: Sequence[ImageRecord]) -> torch.Tensor:
        return torch.tensor([self.index[r.path] for r in records], dtype=torch.long)


def summarize(metrics: dict) -> dict[str, float]:
    """Flat numbers of one metrics dict: rank-k (where the CMC reaches), mAP, mINP."""
    cmc = np.asarray(metrics["cmc"], dtype=np.float64)
    out = {f"rank{k}": float(cmc[min(k, len(cmc)) - 1]) for k in REPORTED_RANKS}
    out["mAP"] = float(metrics["mAP"])
    out["mINP"] = float(metrics["mINP"])
    return out


def _setting_metrics(
    protocol: str,
    family: DatasetProtocol,
    setting: TestSetting,
    features: dict[str, FeatureSet],
    images: TestImages,
    max_rank: int,
    rerank: RerankSettings | None = None,
) -> dict:
    """One setting's metrics; with `rerank`, on the k-reciprocal re-ranked distances."""
    q_view, g_view = PRIVACY_PROTOCOLS[protocol]
    q_pos = images.positions(setting.split.query)
    g_pos = images.positions(setting.split.gallery)
    q, g = features[q_view].features[q_pos], features[g_view].features[g_pos]
    dist = pairwise_distance(q, g) if rerank is None else rerank_distance(q, g, rerank)
    rule = RETRIEVAL_RULES[family.metrics]
    return rule(dist, setting.split.query, setting.split.gallery, max_rank)


def _protocol_results(
    protocols: Sequence[str],
    settings: Sequence[TestSetting],
    measure: Callable[[str, TestSetting], dict],
) -> dict[str, dict[str, GroupResult]]:
    """privacy protocol -> group -> the mean over the group's trials, each trial, mean CMC."""
    results: dict[str, dict[str, GroupResult]] = {}
    for protocol in protocols:
        groups: dict[str, dict] = {}
        for setting in settings:
            m = measure(protocol, setting)
            entry = groups.setdefault(setting.group, {"trials": [], "cmcs": []})
            entry["trials"].append({"trial": setting.trial, **summarize(m)})
            entry["cmcs"].append(np.asarray(m["cmc"], dtype=np.float64))
        results[protocol] = {}
        for group, entry in groups.items():
            length = min(len(c) for c in entry["cmcs"])
            mean_cmc = np.mean([c[:length] for c in entry["cmcs"]], axis=0)
            mean = {
                k: float(np.mean([t[k] for t in entry["trials"]]))
                for k in entry["trials"][0]
                if k != "trial"
            }
            results[protocol][group] = GroupResult(mean, mean_cmc.tolist(), entry["trials"])
    return results


def evaluate(
    model: PPAEncoder,
    cfg: DictConfig,
    *,
    device: DeviceSettings,
    protocols: Sequence[str] | None = None,
    anonymizer: KprAnonymizer | None = None,
    keypoints: KeypointCache | None = None,
    noise_keys: NoiseKeys | None = None,
    settings: Sequence[TestSetting] | None = None,
    progress: bool = True,
    trained_on: Any | None = None,
    camera_statistics: CameraStatistics | None = None,
) -> EvaluationReport:
    """Evaluate `model` on the test protocol of `cfg.dataset` under privacy protocols.

    The report holds, per privacy protocol and group (SYSU mode / RegDB direction), the mean
    over trials of rank1/5/10/20, mAP and mINP, each trial's numbers and the mean CMC curve.

    `trained_on` is the ``dataset`` config the model was trained with (default
    ``cfg.dataset``): test settings that hold its training identities are refused
    (`ppa.data.leakage`), e.g. a RegDB model tested on another trial.

    The test images are the evaluator's: a noise anonymiser draws from `noise_keys`, by
    default the evaluator's own (`ppa.data.noise_keys.EVALUATOR`, made on first use).

    With ``eval.camera_statistics=training``, `camera_statistics` are the per-camera BatchNorm
    statistics to use (a federation's, from its statistics round); None measures them on the
    configured training set (`training_camera_statistics`, a centralised model).

    With ``eval.rerank.enabled`` the same features are also scored on k-reciprocal re-ranked
    distances, kept apart in `EvaluationReport.reranked`.
    """
    protocols = list(protocols or cfg.eval.protocols)
    unknown = [p for p in protocols if p not in PRIVACY_PROTOCOLS]
    if unknown:
        raise ValueError(
            f"unknown privacy protocol(s) {unknown}; expected {sorted(PRIVACY_PROTOCOLS)}"
        )
    views = tuple(sorted({v for p in protocols for v in PRIVACY_PROTOCOLS[p]}, key=VIEWS.index))
    if "anon" in views and anonymizer is None:
        raise ValueError(f"protocols {protocols} need an anonymizer")
    settings = list(settings) if settings is not None else test_settings(cfg.dataset)
    if not settings:
        raise ValueError(f"dataset {cfg.dataset.name}: no test settings configured")
    check_trained_on(trained_on or cfg.dataset, settings)
    images = TestImages.from_settings(settings)
    root = settings[0].split.root
    pose_cfg = cfg.pose
    if pose_cfg.missing == "skip":
        # Dropping test images would silently change the protocol; fall back to the prior.
        logger.warning("pose.missing=skip does not apply to test images; using center_prior")
        pose_cfg = OmegaConf.merge(pose_cfg, {"missing": "center_prior"})
    if "anon" in views and noise_keys is None:
        noise_keys = noise_keys_for(cfg, EVALUATOR)
    mean, std = tuple(cfg.input.mean), tuple(cfg.input.std)

    def loader_for(records: Sequence[ImageRecord]) -> Iterable[Batch]:
        return create_eval_loader(
            records,
            root,
            input_cfg=cfg.input,
            batch_size=int(cfg.eval.batch_size),
            num_workers=int(cfg.eval.num_workers),
            pose_cfg=pose_cfg,
            keypoints=keypoints if "anon" in views else None,
            on_bad_image="error",
            noise_keys=noise_keys if "anon" in views else None,
        )

    def extract(loader: Iterable[Batch]) -> dict[str, FeatureSet]:
        return extract_features(
            model,
            loader,
            device=device,
            mean=mean,
            std=std,
            views=views,
            anonymizer=anonymizer,
            correct_offsets=bool(cfg.ppa.offsets),
            flip=bool(cfg.eval.flip_test),
            progress=progress,
            desc="test features",
        )

    source = camera_statistics_source(cfg)
    if source == "none":
        features = extract(loader_for(images.records))
    else:
        if source == "training" and camera_statistics is None:
            camera_statistics = training_camera_statistics(model, cfg, device=device.device)
        features = features_with_camera_statistics(
            model,
            images.records,
            loader_for,
            extract,
            mean=mean,
            std=std,
            device=device.device,
            statistics=camera_statistics if source == "training" else None,
        )
    max_rank = int(cfg.eval.max_rank)
    family = dataset_protocol(cfg.dataset)
    results = _protocol_results(
        protocols,
        settings,
        lambda protocol, setting: _setting_metrics(
            protocol, family, setting, features, images, max_rank
        ),
    )
    rerank = RerankSettings.from_config(cfg.eval)
    reranked = None
    if rerank is not None:
        reranked = _protocol_results(
            protocols,
            settings,
            lambda protocol, setting: _setting_metrics(
                protocol, family, setting, features, images, max_rank, rerank
            ),
        )
    return EvaluationReport(
        dataset=str(cfg.dataset.name),
        protocol=family.name,
        num_test_images=len(images.records),
        results=results,
        reranked=reranked,
    )
