"""How much an anonymiser hides: head/whole-image PSNR and SSIM, face detection, sample grids."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ppa.anonymize import KprAnonymizer
from ppa.data.loader import Batch
from ppa.data.records import MODALITIES, ImageRecord
from ppa.privacy import FaceDetector, psnr, save_anonymization_grid, ssim, to_uint8_images
from ppa.progress_bar import ProgressBar  # log lines, not a bar, when not on a terminal


@dataclass
class AnonymizationReport:
    """Means over the measured images (head scores over images that have a head mask)."""

    scores: dict[str, float]
    samples_raw: dict[str, torch.Tensor] = field(default_factory=dict)
    samples_anon: dict[str, torch.Tensor] = field(default_factory=dict)

    def save_grid(self, path: str | Path) -> Path | None:
        labels = [m for m in self.samples_raw if len(self.samples_raw[m])]
        if not labels:
            return None
        return save_anonymization_grid(
            [self.samples_raw[m] for m in labels],
            [self.samples_anon[m] for m in labels],
            path,
            labels,
        )


def sample_by_modality(records: Sequence[ImageRecord], count: int) -> list[ImageRecord]:
    """`count` records, half of each modality where both have enough (the other fills up
    where one runs short), evenly spread over each modality's records in their order.

    Test splits list one modality's queries first (SYSU: infrared queries, visible gallery),
    so "the first `count` images" would measure a single modality.
    """
    if count <= 0:
        return []
    by_modality = {m: [r for r in records if r.modality == m] for m in MODALITIES}
    quota = {m: min(len(rs), count // len(MODALITIES)) for m, rs in by_modality.items()}
    for m in MODALITIES:  # hand the rest (odd count, a short modality) to whoever has more
        spare = count - sum(quota.values())
        quota[m] += min(spare, len(by_modality[m]) - quota[m])
    picked: list[ImageRecord] = []
    for m, rs in by_modality.items():
        if quota[m]:
            picks = np.unique(np.linspace(0, len(rs) - 1, quota[m]).round().astype(int))
            picked.extend(rs[i] for i in picks)
    return picked


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values; inf if every value is inf (an anonymiser that changes
    nothing), NaN if there are none."""
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        return float(sum(finite) / len(finite))
    return float("inf") if any(math.isinf(v) for v in values) else float("nan")


@torch.no_grad()
def measure_anonymization(
    loader: Iterable[Batch],
    anonymizer: KprAnonymizer,
    device: torch.device,
    *,
    max_images: int | None = None,
    face_detector: FaceDetector | None = None,
    grid_samples: int = 8,
    progress: bool = True,
) -> AnonymizationReport:
    """Compare raw and anonymised versions of the loader's images.

    PSNR/SSIM in the KPR head mask and over the whole image (lower = more private), and,
    with a `face_detector`, the share of images where a face is found before and after.
    """
    values: dict[str, list[float]] = {
        k: [] for k in ("head_psnr", "head_ssim", "image_psnr", "image_ssim")
    }
    faces_raw = faces_anon = 0
    seen = 0
    per_modality = {m.value: 0 for m in MODALITIES}
    raw_samples: dict[str, list[torch.Tensor]] = {m.value: [] for m in MODALITIES}
    anon_samples: dict[str, list[torch.Tensor]] = {m.value: [] for m in MODALITIES}
    for batch in ProgressBar(loader, desc="anonymisation", disable=not progress, leave=False):
        if max_images is not None and seen >= max_images:
            break
        batch = batch.to(device)
        result = anonymizer(batch.images, batch.keypoints, batch.seeds)
        raw, anon, head = batch.images, result.images, result.masks.head
        has_head = head.flatten(1).sum(dim=1) > 0
        for key, fn, mask in (
            ("head_psnr", psnr, head),
            ("head_ssim", ssim, head),
            ("image_psnr", psnr, None),
            ("image_ssim", ssim, None),
        ):
            per_image = fn(raw, anon, mask)
            keep = has_head if mask is not None else torch.ones_like(has_head)
            values[key].extend(float(v) for v in per_image[keep].cpu())
        if face_detector is not None:
            faces_raw += sum(len(b) > 0 for b in face_detector.detect(to_uint8_images(raw)))
            faces_anon += sum(len(b) > 0 for b in face_detector.detect(to_uint8_images(anon)))
        for m in MODALITIES:
            sel = (batch.modality == m.index).nonzero(as_tuple=True)[0]
            room = grid_samples - sum(len(t) for t in raw_samples[m.value])
            if room > 0 and len(sel):
                raw_samples[m.value].append(raw[sel[:room]].cpu())
                anon_samples[m.value].append(anon[sel[:room]].cpu())
        seen += raw.shape[0]
        for m in MODALITIES:
            per_modality[m.value] += int((batch.modality == m.index).sum())
    scores = {k: _finite_mean(v) for k, v in values.items()}
    scores["num_images"] = float(seen)
    for m in MODALITIES:
        scores[f"num_images_{m.value}"] = float(per_modality[m.value])
    if face_detector is not None and seen:
        scores["face_rate_raw"] = faces_raw / seen
        scores["face_rate_anon"] = faces_anon / seen
    return AnonymizationReport(
        scores,
        {m: torch.cat(t) for m, t in raw_samples.items() if t},
        {m: torch.cat(t) for m, t in anon_samples.items() if t},
    )
