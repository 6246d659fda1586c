"""Privacy-utility report of several anonymiser settings (Hydra entry point).

    ppa-privacy-report experiment=demo checkpoint=outputs/demo/checkpoints/last.pt
    ppa-privacy-report experiment=demo privacy_report.utility=false \\
        privacy_report.photos=/data/person_photos

For each setting of `privacy_report.settings` (an anonymiser at its configured or overridden
strength, pose-guided KPR or whole-image) it measures, raw vs anonymised:

- on the dataset's test images (both modalities, at the network input size): PSNR and SSIM in
  the KPR head region, in the skeleton region (the body structure KPR keeps) and over the
  whole image, and the face detection rate before and after;
- on real photos (the portraits shipped with scikit-image and matplotlib, and any folder given):
  the same, at the photo's resolution (keypoints from the folder's keypoint cache, else the
  canonical body prior);
- utility: Rank-1 and mAP of the checkpoint (or the setting's own checkpoint) with anonymised
  query and gallery (anon-anon) and raw query vs anonymised gallery (raw-anon), through
  `ppa.evaluation.evaluate`; raw-raw once per checkpoint as the reference.

Faces are found by `ppa.privacy.FaceDetector`: OpenCV's LBP frontal-face cascade as shipped
with scikit-image (the pinned OpenCV wheel has no Haar cascade files). A face counts "on the
head" when a box centre lies in the KPR head mask.

Writes into `<output_dir>/privacy_report/`: `privacy_report.json` (every number, per setting,
per photo and per test group), `privacy_report.md` (the privacy-utility table),
`privacy_utility.png` (utility vs privacy), `samples.png` and `photos.png` (raw vs anonymised).
The last line printed is the path of privacy_report.json.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import cbook
from omegaconf import DictConfig, OmegaConf
from skimage import data as skimage_data
from torch import Tensor

from ppa.anonymize import KprAnonymizer
from ppa.anonymize.kpr import AnonymizedBatch
from ppa.checkpoint import model_from_checkpoint
from ppa.cli.evaluate import effective_config
from ppa.config import CONFIG_DIR, resolve_path
from ppa.data.errors import CorruptImageError
from ppa.data.images import read_image
from ppa.data.keypoints import KeypointCache, load_dataset_keypoints
from ppa.data.loader import Batch, create_eval_loader, image_seed
from ppa.data.protocols import TestSetting, dataset_root, test_settings
from ppa.data.records import MODALITIES
from ppa.data.transforms import ReidTransform
from ppa.engine import DeviceSettings
from ppa.evaluation import TestImages, evaluate
from ppa.model import PPAEncoder
from ppa.pose.coco import INDEX, NUM_KEYPOINTS
from ppa.pose.prior import canonical_keypoints
from ppa.privacy import FaceDetector, psnr, ssim, to_uint8_images
from ppa.runtime import seed_everything

logger = logging.getLogger("privacy_report")

REPORT_DIR = "privacy_report"
DEFAULT_REPORT_CONFIG = CONFIG_DIR / "privacy_report" / "default.yaml"
UTILITY_PROTOCOLS = ("anon-anon", "raw-anon")
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
HAND_PLACED_SCORE = 0.9
THUMBNAIL = 160  # pixels, the side of a photo cell in photos.png
CASCADE_NOTE = (
    "OpenCV's LBP frontal-face cascade as shipped with scikit-image, run by "
    "skimage.feature.Cascade; the pinned OpenCV wheel ships no Haar cascade files"
)
# Head and shoulder joints placed by hand on the packaged portraits (x, y in their pixels;
# COCO left = the person's left, i.e. the image's right for a frontal photo).
SAMPLE_PHOTO_JOINTS: dict[str, dict[str, tuple[float, float]]] = {
    "astronaut": {
        "nose": (224, 128),
        "left_eye": (243, 104),
        "right_eye": (205, 106),
        "left_ear": (265, 112),
        "right_ear": (180, 115),
        "left_shoulder": (330, 290),
        "right_shoulder": (90, 300),
    },
    "grace_hopper": {
        "nose": (255, 245),
        "left_eye": (295, 200),
        "right_eye": (215, 200),
        "left_ear": (345, 225),
        "right_ear": (165, 230),
        "left_shoulder": (440, 410),
        "right_shoulder": (90, 420),
    },
}


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class AnonymizerSetting:
    """One row of the report: an anonymiser config, pose-guided or not, and its model."""

    label: str
    anonymizer: dict[str, Any]  # the full `anonymizer` config group
    pose_guided: bool
    checkpoint: Path | None

    @classmethod
    def from_entry(
        cls, entry: Any, index: int, default_checkpoint: Path | None
    ) -> AnonymizerSetting:
        """Parse `privacy_report.settings[index]`."""
        key = f"privacy_report.settings[{index}]"
        entry = OmegaConf.to_container(entry, resolve=True) if OmegaConf.is_config(entry) else entry
        if not isinstance(entry, dict) or "anonymizer" not in entry:
            raise ValueError(f"{key} must be a mapping with an `anonymizer` key, got {entry!r}")
        unknown = set(entry) - {
            "anonymizer",
            "pose_guided",
            "strength",
            "levels",
            "label",
            "checkpoint",
        }
        if unknown:
            raise ValueError(f"{key}: unknown key(s) {sorted(unknown)}")
        name = str(entry["anonymizer"])
        source = CONFIG_DIR / "anonymizer" / f"{name}.yaml"
        if not source.is_file():
            known = sorted(p.stem for p in source.parent.glob("*.yaml"))
            raise ValueError(f"{key}: anonymizer={name!r} is not one of {known}")
        anonymizer = OmegaConf.to_container(OmegaConf.load(source), resolve=True)
        if "strength" in entry:
            anonymizer["strength"] = entry["strength"]
        if "levels" in entry:
            anonymizer["levels"] = {**anonymizer["levels"], **dict(entry["levels"])}
        pose_guided = bool(entry.get("pose_guided", True))
        label = entry.get("label") or (
            f"{name} {anonymizer['strength']:g} {'KPR' if pose_guided else 'whole'}"
        )
        checkpoint = entry.get("checkpoint")
        return cls(
            str(label),
            anonymizer,
            pose_guided,
            resolve_path(checkpoint) if checkpoint else default_checkpoint,
        )

    @property
    def name(self) -> str:
        return str(self.anonymizer["name"])

    def apply(self, cfg: DictConfig) -> DictConfig:
        """`cfg` with this setting's anonymiser and pose guidance."""
        return OmegaConf.merge(
            cfg, {"anonymizer": self.anonymizer, "ppa": {"pose_guided": self.pose_guided}}
        )


def report_config(cfg: DictConfig) -> DictConfig:
    """``cfg.privacy_report``; the group's defaults when config.yaml does not select it."""
    if "privacy_report" in cfg:
        return cfg.privacy_report
    logger.info("no privacy_report group in the config: using %s", DEFAULT_REPORT_CONFIG)
    return OmegaConf.load(DEFAULT_REPORT_CONFIG)


# --------------------------------------------------------------------------- measuring
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


@dataclass
class Photo:
    """A real photo at measuring resolution, with its keypoints."""

    name: str
    source: str
    keypoints_from: str  # cache | prior | hand-placed
    image: Tensor  # (1, 3, H, W) in [0, 1]
    keypoints: Tensor  # (1, 17, 3) in its pixels

    @property
    def seed(self) -> Tensor:
        return torch.tensor([image_seed(self.name)], dtype=torch.long)


def _photo(
    name: str,
    source: str,
    keypoints_from: str,
    image: np.ndarray,
    points: np.ndarray,
    max_height: int,
) -> Photo:
    height, width = image.shape[:2]
    if height > max_height:  # aspect kept; keypoints follow the resize
        height, width = max_height, max(1, round(width * max_height / height))
    tensor, kp = ReidTransform(height, width)(image, points)
    return Photo(name, source, keypoints_from, tensor[None], kp[None])


def _hand_placed(joints: dict[str, tuple[float, float]]) -> np.ndarray:
    points = np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
    for joint, (x, y) in joints.items():
        points[INDEX[joint]] = (x, y, HAND_PLACED_SCORE)
    return points


def sample_photos(max_height: int) -> list[Photo]:
    """The portraits shipped with scikit-image and matplotlib (no download needed)."""
    hopper = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return [
        _photo(
            "astronaut",
            "skimage.data.astronaut()",
            "hand-placed",
            np.ascontiguousarray(skimage_data.astronaut()),
            _hand_placed(SAMPLE_PHOTO_JOINTS["astronaut"]),
            max_height,
        ),
        _photo(
            "grace_hopper",
            f"matplotlib sample data {hopper.name}",
            "hand-placed",
            read_image(hopper),
            _hand_placed(SAMPLE_PHOTO_JOINTS["grace_hopper"]),
            max_height,
        ),
    ]


def folder_photos(folder: Path, cache_name: str, max_height: int, on_bad_image: str) -> list[Photo]:
    """Every image under `folder`, keypoints from `<folder>/<cache_name>` or the prior."""
    if not folder.is_dir():
        raise FileNotFoundError(f"privacy_report.photos={folder} is not a folder")
    paths = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES
    )
    if not paths:
        raise ValueError(f"privacy_report.photos={folder} holds no {sorted(PHOTO_SUFFIXES)} images")
    cache_file = folder / cache_name
    cache = KeypointCache.load(cache_file) if cache_file.is_file() else None
    photos, prior = [], []
    for path in paths:
        name = path.relative_to(folder).as_posix()
        try:
            image = read_image(path)
        except CorruptImageError as err:
            if on_bad_image != "skip":
                raise
            logger.warning("on_bad_image=skip: dropping photo %s", err)
            continue
        points = cache.get(name) if cache is not None else None
        if points is None or not (points[:, 2] > 0).any():
            prior.append(name)
            points, origin = canonical_keypoints(*image.shape[:2]), "prior"
        else:
            origin = "cache"
        photos.append(_photo(name, str(path), origin, image, points, max_height))
    if prior:
        logger.warning(
            "%d of %d photos in %s have no keypoints in %s: using the canonical "
            "body prior (ppa.pose.prior) for %s",
            len(prior),
            len(paths),
            folder,
            cache_file if cache is not None else "(no cache)",
            ", ".join(prior[:5]),
        )
    return photos


def _thumbnail(image: Tensor, size: int = THUMBNAIL) -> Tensor:
    """(1, 3, H, W) -> (1, 3, size, size): fitted, aspect kept, padded white."""
    height, width = image.shape[-2:]
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    small = F.interpolate(image, size=(h, w), mode="area")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(small, (left, size - w - left, top, size - h - top), value=1.0)


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
    """Score every batch; keep the first images of each modality (half each) for the grid."""
    meter = PrivacyMeter(detector)
    per_modality = {m.index: math.ceil(samples / 2) for m in MODALITIES}
    raw_keep: list[Tensor] = []
    anon_keep: list[Tensor] = []
    for batch in batches:
        batch = batch.to(device)
        result = anonymizer(batch.images, batch.keypoints, batch.seeds)
        meter.add(batch.images, result)
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
) -> Measured:
    meter = PrivacyMeter(detector)
    per_photo, raw_thumbs, anon_thumbs = [], [], []
    for photo in photos:  # one at a time: sizes differ
        raw = photo.image.to(device)
        result = anonymizer(raw, photo.keypoints.to(device), photo.seed.to(device))
        (numbers,) = meter.add(raw, result)
        per_photo.append({"photo": photo.name, **numbers})
        raw_thumbs.append(_thumbnail(raw.cpu()))
        anon_thumbs.append(_thumbnail(result.images.cpu()))
    empty = torch.zeros(0)
    return Measured(
        meter.summary(),
        per_photo,
        torch.cat(raw_thumbs) if raw_thumbs else empty,
        torch.cat(anon_thumbs) if anon_thumbs else empty,
    )


def dataset_batches(
    cfg: DictConfig, settings: Sequence[TestSetting], count: int, keypoints: KeypointCache | None
) -> list[Batch]:
    """`count` test images spread evenly over the query and gallery records (both modalities),
    loaded once at the network input size."""
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
    )
    return list(loader)


# --------------------------------------------------------------------------- utility
def utility_numbers(report: dict) -> dict[str, dict[str, dict[str, float]]]:
    """protocol -> group -> mean rank1/5/10/20, mAP, mINP (no CMC curves)."""
    return {
        protocol: {
            group: {k: v for k, v in entry["mean"].items() if k != "cmc"}
            for group, entry in groups.items()
        }
        for protocol, groups in report["results"].items()
    }


def trained_with(payload: dict) -> dict[str, Any]:
    config = payload.get("config") or {}
    return {
        "method": config.get("ppa", {}).get("name"),
        "anonymizer": config.get("anonymizer", {}).get("name"),
        "strength": config.get("anonymizer", {}).get("strength"),
        "pose_guided": config.get("ppa", {}).get("pose_guided"),
        "epochs": payload.get("epoch"),
        "server_round": payload.get("server_round"),
    }


# --------------------------------------------------------------------------- output
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


def _jsonable(value: Any) -> Any:
    """Strict JSON: NaN (nothing to measure) -> null, inf (nothing changed) -> "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- the run
class Checkpoints:
    """Models and payloads loaded once per path."""

    def __init__(self, device: torch.device):
        self.device = device
        self._loaded: dict[Path, tuple[PPAEncoder, dict]] = {}

    def get(self, path: Path) -> tuple[PPAEncoder, dict]:
        if path not in self._loaded:
            model, payload = model_from_checkpoint(path)
            self._loaded[path] = (model.to(self.device).eval(), payload)
        return self._loaded[path]


def build_anonymizer(
    setting: AnonymizerSetting, run_cfg: DictConfig, payload: dict, device: torch.device
) -> KprAnonymizer:
    """The setting's KPR anonymiser (a learned generator comes from its checkpoint)."""
    anonymizer = KprAnonymizer.from_config(run_cfg).to(device)
    if setting.name == "learned":
        if "anonymizer" not in payload:
            raise ValueError(
                f"setting {setting.label!r}: a learned anonymiser needs the generator trained "
                f"with the model; checkpoint {setting.checkpoint} holds none"
            )
        anonymizer.load_state_dict(payload["anonymizer"])
    return anonymizer.eval()


def run(cfg: DictConfig) -> Path:
    """Measure every setting; write the JSON, markdown table, plot and grids; return the JSON."""
    rc = report_config(cfg)
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    default_ckpt = resolve_path(cfg.checkpoint) if cfg.checkpoint else None
    entries = list(rc.settings or [])
    if not entries:
        raise ValueError("privacy_report.settings is empty: list at least one anonymiser")
    settings = [AnonymizerSetting.from_entry(e, i, default_ckpt) for i, e in enumerate(entries)]
    utility = bool(rc.utility)
    missing = [s.label for s in settings if s.checkpoint is None]
    if utility and missing:
        raise ValueError(
            f"utility needs a model: settings {missing} have no checkpoint; pass "
            "checkpoint=<.pt>, a per-setting checkpoint, or privacy_report.utility=false"
        )
    device_settings = DeviceSettings.from_config(cfg)
    device = device_settings.device
    models = Checkpoints(device)
    max_height = int(rc.photo_max_height)
    photos: list[Photo] = sample_photos(max_height) if rc.sample_photos else []
    if rc.photos:
        photos += folder_photos(
            resolve_path(rc.photos),
            str(rc.photos_keypoints),
            max_height,
            str(cfg.dataset.on_bad_image),
        )
    detector = FaceDetector(
        min_size=(int(rc.face_detector.min_size),) * 2,
        scale_factor=float(rc.face_detector.scale_factor),
        min_neighbors=int(rc.face_detector.min_neighbors),
    )
    root = dataset_root(cfg.dataset)
    tests = test_settings(cfg.dataset)  # validates the layout before any work
    keypoints = load_dataset_keypoints(
        root, cfg.dataset.keypoints, required=cfg.pose.missing == "error"
    )

    batches: dict[tuple[int, int], list[Batch]] = {}  # test images per input size, loaded once
    reference: dict[str, dict] = {}  # raw-raw utility per checkpoint
    rows: list[dict] = []
    sample_grid, photo_grid = Grids(), Grids()
    for setting in settings:
        model, payload = models.get(setting.checkpoint) if setting.checkpoint else (None, {})
        run_cfg = setting.apply(effective_config(cfg, payload.get("config")))
        anonymizer = build_anonymizer(setting, run_cfg, payload, device)
        size = (int(run_cfg.input.height), int(run_cfg.input.width))
        row: dict[str, Any] = {
            "label": setting.label,
            "anonymizer": setting.name,
            "strength": setting.anonymizer["strength"],
            "levels": setting.anonymizer["levels"],
            "pose_guided": setting.pose_guided,
            "input": list(size),
            "checkpoint": str(setting.checkpoint) if setting.checkpoint else None,
            "trained_with": trained_with(payload) if payload else None,
        }
        if int(rc.images) > 0:
            if size not in batches:
                batches[size] = dataset_batches(run_cfg, tests, int(rc.images), keypoints)
            measured = measure_batches(
                batches[size], anonymizer, device, detector, int(rc.grid_samples)
            )
            row["dataset"] = measured.scores
            sample_grid.add(setting.label, measured.raw, measured.anon)
        if photos:
            measured = measure_photos(photos, anonymizer, device, detector)
            row["photos"] = {**measured.scores, "per_photo": measured.per_image}
            photo_grid.add(setting.label, measured.raw, measured.anon)
        if utility and model is not None:
            key = str(setting.checkpoint)
            if key not in reference:
                reference[key] = utility_numbers(
                    evaluate(
                        model,
                        run_cfg,
                        device=device_settings,
                        protocols=["raw-raw"],
                        settings=tests,
                        progress=False,
                    )
                )
            row["utility"] = utility_numbers(
                evaluate(
                    model,
                    run_cfg,
                    device=device_settings,
                    protocols=list(UTILITY_PROTOCOLS),
                    anonymizer=anonymizer,
                    keypoints=keypoints,
                    settings=tests,
                    progress=False,
                )
            )
        rows.append(row)
        logger.info("%s: %s", setting.label, _log_line(row, tests[0].group))

    out = resolve_path(cfg.output_dir) / REPORT_DIR
    report: dict[str, Any] = {
        "dataset": {
            "name": str(cfg.dataset.name),
            "root": str(root),
            "protocol": str(cfg.dataset.protocol),
            "images": int(rows[0].get("dataset", {}).get("num_images", 0)),
            "input": rows[0]["input"],
        },
        "utility_group": tests[0].group if utility else None,
        "utility_trials": sorted({t.trial for t in tests}),
        "photos": [
            {
                "name": p.name,
                "source": p.source,
                "keypoints": p.keypoints_from,
                "size": list(p.image.shape[-2:]),
            }
            for p in photos
        ],
        "face_detector": {
            "cascade": str(detector.cascade_path),
            "note": CASCADE_NOTE,
            "min_size": list(detector.min_size),
            "scale_factor": detector.scale_factor,
            "min_neighbors": detector.min_neighbors,
        },
        "reference": reference,
        "rows": rows,
    }
    files = {
        "json": out / "privacy_report.json",
        "markdown": out / "privacy_report.md",
        "plot": plot_report(report, out / "privacy_utility.png"),
    }
    for key, grid, title in (
        ("samples", sample_grid, f"{cfg.dataset.name} test images: raw, then anonymised"),
        ("photos", photo_grid, "photos: raw, then anonymised"),
    ):
        written = grid.save(out / f"{key}.png", title)
        if written is not None:
            files[key] = written
    report["files"] = {k: str(v) for k, v in files.items()}
    table = format_markdown(report)
    files["markdown"].write_text(f"# Privacy-utility report\n\n{table}")
    files["json"].write_text(json.dumps(_jsonable(report), indent=2, allow_nan=False))
    print(table)
    return files["json"]


def _log_line(row: dict, group: str) -> str:
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


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    path = run(cfg)
    print(path)


if __name__ == "__main__":
    main()
