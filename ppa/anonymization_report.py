"""How much an anonymiser hides: head/whole-image PSNR and SSIM, face detection, sample grids."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ppa.anonymize import KprAnonymizer
from ppa.data.loader import Batch
from ppa.data.records import MODALITIES
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
    scores = {k: _finite_mean(v) for k, v in values.items()}
    scores["num_images"] = float(seen)
    if face_detector is not None and seen:
        scores["face_rate_raw"] = faces_raw / seen
        scores["face_rate_anon"] = faces_anon / seen
    return AnonymizationReport(
        scores,
        {m: torch.cat(t) for m, t in raw_samples.items() if t},
        {m: torch.cat(t) for m, t in anon_samples.items() if t},
    )
