"""How much an anonymiser hides: PSNR and SSIM raw vs anonymised in the KPR head region, the
skeleton region (the structure KPR keeps) and the whole image, face detections before and
after, and sample grids. `PrivacyMeter` is the one meter; the evaluation command and the
privacy-utility report both use it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ppa.anonymize.kpr import AnonymizedBatch, KprAnonymizer
from ppa.anonymize.measures import (
    FaceDetector,
    psnr,
    save_anonymization_grid,
    ssim,
    to_uint8_images,
)
from ppa.data.loader import Batch
from ppa.data.records import MODALITIES, ImageRecord
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


def _mean(values: Sequence[float]) -> float:
    """Mean of the finite values; inf when all are inf (nothing changed); NaN when none."""
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        return float(np.mean(finite))
    return float("inf") if any(math.isinf(v) for v in values) else float("nan")


def _faces_on(boxes: np.ndarray, head: Tensor) -> bool:
    """Whether a box centre lies in the head mask (H, W)."""
    height, width = head.shape
    for x, y, w, h in boxes:
        cx, cy = min(int(x + w / 2), width - 1), min(int(y + h / 2), height - 1)
        if head[cy, cx] > 0.5:
            return True
    return False


@dataclass
class PrivacyMeter:
    """Per-image raw-vs-anonymised scores over the head, skeleton and whole image, and face
    detections before and after, accumulated over batches."""

    detector: FaceDetector | None
    scores: dict[str, list[float]] = field(
        default_factory=lambda: {
            f"{region}_{metric}": []
            for region in ("head", "skeleton", "image")
            for metric in ("psnr", "ssim")
        }
    )
    faces: dict[str, int] = field(
        default_factory=lambda: {
            "raw": 0,
            "anon": 0,
            "raw_on_head": 0,
            "anon_on_head": 0,
            "with_head": 0,
        }
    )
    images: int = 0

    def add(self, raw: Tensor, result: AnonymizedBatch) -> list[dict[str, float]]:
        """Score one batch; returns the per-image numbers."""
        anon, masks = result.images, result.masks
        per_image: list[dict[str, float]] = [{} for _ in range(raw.shape[0])]
        for region, mask in (("head", masks.head), ("skeleton", masks.skeleton), ("image", None)):
            present = (
                mask.flatten(1).sum(dim=1) > 0
                if mask is not None
                else torch.ones(raw.shape[0], dtype=torch.bool, device=raw.device)
            )
            for metric, fn in (("psnr", psnr), ("ssim", ssim)):
                values = fn(raw, anon, mask).cpu()
                for i in present.nonzero(as_tuple=True)[0].tolist():
                    self.scores[f"{region}_{metric}"].append(float(values[i]))
                    per_image[i][f"{region}_{metric}"] = float(values[i])
        if self.detector is not None:
            found_raw = self.detector.detect(to_uint8_images(raw))
            found_anon = self.detector.detect(to_uint8_images(anon))
            heads = masks.head[:, 0].cpu()
            for i, (before, after) in enumerate(zip(found_raw, found_anon, strict=True)):
                record = {"faces_raw": len(before), "faces_anon": len(after)}
                self.faces["raw"] += len(before) > 0
                self.faces["anon"] += len(after) > 0
                if heads[i].sum() > 0:
                    self.faces["with_head"] += 1
                    record["face_on_head_raw"] = _faces_on(before, heads[i])
                    record["face_on_head_anon"] = _faces_on(after, heads[i])
                    self.faces["raw_on_head"] += record["face_on_head_raw"]
                    self.faces["anon_on_head"] += record["face_on_head_anon"]
                per_image[i].update(record)
        self.images += raw.shape[0]
        return per_image

    def add_recovery(self, raw: Tensor, with_key: Tensor, wrong_key: Tensor) -> None:
        """Score a reversible anonymiser's recovery of one batch, whole image against raw:
        with the images' own keys (``recovery_*``) and with wrong keys (``wrong_key_*``)."""
        for name, recovered in (("recovery", with_key), ("wrong_key", wrong_key)):
            for metric, fn in (("psnr", psnr), ("ssim", ssim)):
                values = fn(raw, recovered).cpu().tolist()
                self.scores.setdefault(f"{name}_{metric}", []).extend(values)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {k: _mean(v) for k, v in self.scores.items()}
        out["num_images"] = float(self.images)
        if self.detector is not None and self.images:
            out["face_rate_raw"] = self.faces["raw"] / self.images
            out["face_rate_anon"] = self.faces["anon"] / self.images
            heads = self.faces["with_head"]
            out["num_with_head"] = float(heads)
            out["face_on_head_rate_raw"] = self.faces["raw_on_head"] / heads if heads else math.nan
            out["face_on_head_rate_anon"] = (
                self.faces["anon_on_head"] / heads if heads else math.nan
            )
        return out


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
    meter = PrivacyMeter(face_detector)
    seen = 0
    per_modality = {m.value: 0 for m in MODALITIES}
    raw_samples: dict[str, list[torch.Tensor]] = {m.value: [] for m in MODALITIES}
    anon_samples: dict[str, list[torch.Tensor]] = {m.value: [] for m in MODALITIES}
    for batch in ProgressBar(loader, desc="anonymisation", disable=not progress, leave=False):
        if max_images is not None and seen >= max_images:
            break
        batch = batch.to(device)
        result = anonymizer(batch.images, batch.keypoints, batch.noise_keys)
        raw, anon = batch.images, result.images
        meter.add(raw, result)
        for m in MODALITIES:
            sel = (batch.modality == m.index).nonzero(as_tuple=True)[0]
            room = grid_samples - sum(len(t) for t in raw_samples[m.value])
            if room > 0 and len(sel):
                raw_samples[m.value].append(raw[sel[:room]].cpu())
                anon_samples[m.value].append(anon[sel[:room]].cpu())
        seen += raw.shape[0]
        for m in MODALITIES:
            per_modality[m.value] += int((batch.modality == m.index).sum())
    scores = meter.summary()
    for m in MODALITIES:
        scores[f"num_images_{m.value}"] = float(per_modality[m.value])
    return AnonymizationReport(
        scores,
        {m: torch.cat(t) for m, t in raw_samples.items() if t},
        {m: torch.cat(t) for m, t in anon_samples.items() if t},
    )
