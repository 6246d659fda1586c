"""The privacy report's outputs: the markdown table, the utility/privacy plot, sample grids,
strict JSON."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from torch import Tensor

from ppa.anonymize.measures import to_uint8_images

logger = logging.getLogger(__name__)

CASCADE_NOTE = (
    "OpenCV's LBP frontal-face cascade as shipped with scikit-image, run by "
    "skimage.feature.Cascade; the pinned OpenCV wheel ships no Haar cascade files"
)
# Head and shoulder joints placed by hand on the packaged portraits (x, y in their pixels;
# COCO left = the person's left, i.e. the image's right for a frontal photo).


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def _rank_map(row: dict, protocol: str, group: str | None) -> str:
    numbers = row.get("utility", {}).get(protocol, {}).get(group) if group else None
    if not numbers:
        return "-"
    return f"{100 * numbers['rank1']:.1f} / {100 * numbers['mAP']:.1f}"


def _face_counts(scores: dict) -> str:
    if "face_on_head_rate_raw" not in scores or not scores.get("num_with_head"):
        return "-"
    n = int(scores["num_with_head"])
    before = round(scores["face_on_head_rate_raw"] * n)
    after = round(scores["face_on_head_rate_anon"] * n)
    return f"{before}/{n} → {after}/{n}"


def format_markdown(report: dict) -> str:
    group = report.get("utility_group")
    ds = report["dataset"]
    lines = [
        "| setting | head PSNR | head SSIM | skeleton SSIM | image PSNR | image SSIM "
        "| photo head SSIM | photo faces raw → anon | anon-anon R1 / mAP | raw-anon R1 / mAP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        d, p = row.get("dataset") or {}, row.get("photos") or {}
        lines.append(
            f"| {row['label']} | {_fmt(d.get('head_psnr'), 2)} | {_fmt(d.get('head_ssim'), 3)} "
            f"| {_fmt(d.get('skeleton_ssim'), 3)} | {_fmt(d.get('image_psnr'), 2)} "
            f"| {_fmt(d.get('image_ssim'), 3)} | {_fmt(p.get('head_ssim'), 3)} "
            f"| {_face_counts(p)} | {_rank_map(row, 'anon-anon', group)} "
            f"| {_rank_map(row, 'raw-anon', group)} |"
        )
    notes = []
    if ds["images"]:
        notes.append(
            f"Dataset: {ds['name']} ({ds['root']}), {ds['images']} test images of both "
            f"modalities at {ds['input'][0]} x {ds['input'][1]}; PSNR in dB, SSIM raw vs "
            "anonymised (lower = more private; skeleton SSIM: body structure kept, higher = "
            "more kept)."
        )
    if report["photos"]:
        notes.append(
            "Photos: "
            + ", ".join(f"{p['name']} ({p['keypoints']} keypoints)" for p in report["photos"])
            + f". Faces: {CASCADE_NOTE}; a face counts when a box centre lies in the head mask."
        )
    for row in report["rows"]:
        d = row.get("dataset") or {}
        if "recovery_psnr" in d:
            notes.append(
                f"Recovery ({row['label']}, reversible): the decoder with the images' keys gives "
                f"PSNR {_fmt(d['recovery_psnr'], 2)} dB / SSIM {_fmt(d['recovery_ssim'], 3)} "
                f"against the raw images, with wrong keys {_fmt(d['wrong_key_psnr'], 2)} dB / "
                f"{_fmt(d['wrong_key_ssim'], 3)} (the anonymised image itself: "
                f"{_fmt(d.get('image_psnr'), 2)} dB / {_fmt(d.get('image_ssim'), 3)})."
            )
    for path, ref in report.get("reference", {}).items():
        numbers = ref.get("raw-raw", {}).get(group) if group else None
        if numbers:
            notes.append(
                f"Utility: {group}, mean over the dataset's test trials; raw-raw reference of "
                f"{path}: R1 {100 * numbers['rank1']:.1f} / mAP {100 * numbers['mAP']:.1f}."
            )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


@dataclass
class Grids:
    """Raw images and their anonymised versions per setting, for a PNG: a row of raw images,
    then one row per setting."""

    raw: Tensor | None = None
    anon: list[Tensor] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def add(self, label: str, raw: Tensor, anon: Tensor) -> None:
        if not len(raw):
            return
        if self.raw is None:
            self.raw = raw
        if raw.shape != self.raw.shape:  # a setting whose model takes another input size
            logger.info("%s: other image size, left out of the sample grid", label)
            return
        self.anon.append(anon)
        self.labels.append(label)

    def save(self, path: Path, title: str) -> Path | None:
        if self.raw is None:
            return None
        rows = [("raw", self.raw), *zip(self.labels, self.anon, strict=True)]
        columns = self.raw.shape[0]
        height, width = self.raw.shape[-2:]
        cell = 1.6 if max(height, width) > 128 else 0.9
        fig, axes = plt.subplots(
            len(rows),
            columns,
            squeeze=False,
            figsize=(1.6 + cell * columns * width / height, cell * len(rows)),
        )
        for r, (label, images) in enumerate(rows):
            for c in range(columns):
                ax = axes[r][c]
                ax.imshow(to_uint8_images(images[c : c + 1])[0])
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def plot_report(report: dict, path: Path) -> Path:
    """Left: utility (anon-anon and raw-anon mAP) vs head SSIM; right: skeleton SSIM vs head
    SSIM (what KPR keeps vs what it hides). Lower head SSIM = more private."""
    group = report.get("utility_group")
    rows = [r for r in report["rows"] if r.get("dataset")]
    has_utility = bool(group) and any(r.get("utility") for r in rows)
    fig, axes = plt.subplots(
        1, 2 if has_utility else 1, figsize=(12 if has_utility else 6, 4.5), squeeze=False
    )
    axes = axes[0]
    if has_utility:
        ax = axes[0]
        for protocol, marker in (("anon-anon", "o"), ("raw-anon", "s")):
            xs, ys, labels = [], [], []
            for row in rows:
                numbers = row.get("utility", {}).get(protocol, {}).get(group)
                if numbers:
                    xs.append(row["dataset"]["head_ssim"])
                    ys.append(100 * numbers["mAP"])
                    labels.append(row["label"])
            ax.scatter(xs, ys, marker=marker, label=f"{protocol} mAP")
            for x, y, label in zip(xs, ys, labels, strict=True):
                ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for ref in report.get("reference", {}).values():
            numbers = ref.get("raw-raw", {}).get(group)
            if numbers:
                ax.axhline(100 * numbers["mAP"], ls="--", c="grey", label="raw-raw mAP")
        ax.set_xlabel("head SSIM raw vs anonymised (lower = more private)")
        ax.set_ylabel(f"mAP (%), {group}")
        ax.set_title("utility vs privacy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1]
    for row in rows:
        d = row["dataset"]
        marker = "o" if row["pose_guided"] else "x"
        ax.scatter(d["head_ssim"], d["skeleton_ssim"], marker=marker)
        ax.annotate(
            row["label"],
            (d["head_ssim"], d["skeleton_ssim"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("head SSIM (lower = more private)")
    ax.set_ylabel("skeleton SSIM (higher = more body structure kept)")
    ax.set_title("structure kept vs identity hidden (o KPR, x whole image)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def jsonable(value: Any) -> Any:
    """Strict JSON: NaN (nothing to measure) -> null, inf (nothing changed) -> "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def log_line(row: dict, group: str) -> str:
    d = row.get("dataset") or {}
    u = row.get("utility", {}).get("anon-anon", {}).get(group, {})
    parts = [
        f"head SSIM {_fmt(d.get('head_ssim'), 3)}",
        f"skeleton SSIM {_fmt(d.get('skeleton_ssim'), 3)}",
    ]
    if row.get("photos"):
        parts.append(f"photo faces {_face_counts(row['photos'])}")
    if u:
        parts.append(f"anon-anon mAP {100 * u['mAP']:.2f}")
    return ", ".join(parts)
