"""Scoring image sets under one anonymiser setting with `PrivacyMeter`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from ppa.anonymize import KprAnonymizer
from ppa.anonymize.measures import FaceDetector
from ppa.anonymize.report import PrivacyMeter
from ppa.anonymize.secure_reid import wrong_keys
from ppa.data.keypoints import KeypointCache
from ppa.data.loader import Batch, create_eval_loader
from ppa.data.noise_keys import NoiseKeys, no_noise_keys
from ppa.data.protocols import TestSetting, dataset_root
from ppa.data.records import MODALITIES
from ppa.eval.evaluate import TestImages
from ppa.privacy_report.photos import Photo, thumbnail


@dataclass
class Measured:
    """Scores of one image set under one setting, plus sample images for the grids."""

    scores: dict[str, float]
    per_image: list[dict[str, Any]]
    raw: Tensor
    anon: Tensor


@torch.no_grad()
def measure_batches(
    batches: Iterable[Batch],
    anonymizer: KprAnonymizer,
    device: torch.device,
    detector: FaceDetector | None,
    samples: int,
) -> Measured:
    """Score every batch (and a reversible anonymiser's recovery, with the images' keys and
    with wrong ones); keep the first images of each modality (half each) for the grid."""
    meter = PrivacyMeter(detector)
    per_modality = {m.index: math.ceil(samples / 2) for m in MODALITIES}
    raw_keep: list[Tensor] = []
    anon_keep: list[Tensor] = []
    for batch in batches:
        batch = batch.to(device)
        result = anonymizer(batch.images, batch.keypoints, batch.noise_keys)
        meter.add(batch.images, result)
        if anonymizer.anonymizer.reversible:
            inner, keys = anonymizer.anonymizer, batch.noise_keys
            meter.add_recovery(
                batch.images,
                inner.recover(result.images, keys),
                inner.recover(result.images, wrong_keys(keys)),
            )
        for modality, room in per_modality.items():
            picked = (batch.modality == modality).nonzero(as_tuple=True)[0][:room]
            per_modality[modality] -= len(picked)
            raw_keep.append(batch.images[picked].cpu())
            anon_keep.append(result.images[picked].cpu())
    empty = torch.zeros(0)
    return Measured(
        meter.summary(),
        [],
        torch.cat(raw_keep) if raw_keep else empty,
        torch.cat(anon_keep) if anon_keep else empty,
    )


@torch.no_grad()
def measure_photos(
    photos: Sequence[Photo],
    anonymizer: KprAnonymizer,
    device: torch.device,
    detector: FaceDetector | None,
    noise_keys: NoiseKeys | None = None,
) -> Measured:
    """Score each photo; a photo's noise key is that of its name under `noise_keys`."""
    meter = PrivacyMeter(detector)
    per_photo, raw_thumbs, anon_thumbs = [], [], []
    for photo in photos:  # one at a time: sizes differ
        raw = photo.image.to(device)
        keys = noise_keys.tensor([photo.name]) if noise_keys is not None else no_noise_keys(1)
        result = anonymizer(raw, photo.keypoints.to(device), keys.to(device))
        (numbers,) = meter.add(raw, result)
        per_photo.append({"photo": photo.name, **numbers})
        raw_thumbs.append(thumbnail(raw.cpu()))
        anon_thumbs.append(thumbnail(result.images.cpu()))
    empty = torch.zeros(0)
    return Measured(
        meter.summary(),
        per_photo,
        torch.cat(raw_thumbs) if raw_thumbs else empty,
        torch.cat(anon_thumbs) if anon_thumbs else empty,
    )


def dataset_batches(
    cfg: DictConfig,
    settings: Sequence[TestSetting],
    count: int,
    keypoints: KeypointCache | None,
    noise_keys: NoiseKeys | None = None,
) -> list[Batch]:
    """`count` test images spread evenly over the query and gallery records (both modalities),
    loaded once at the network input size (with their keys under `noise_keys`)."""
    records = TestImages.from_settings(settings).records
    if count < len(records):
        picks = np.unique(np.linspace(0, len(records) - 1, count).round().astype(int))
        records = [records[i] for i in picks]
    loader = create_eval_loader(
        records,
        dataset_root(cfg.dataset),
        input_cfg=cfg.input,
        batch_size=int(cfg.eval.batch_size),
        num_workers=int(cfg.eval.num_workers),
        pose_cfg=cfg.pose,
        keypoints=keypoints,
        noise_keys=noise_keys,
    )
    return list(loader)
