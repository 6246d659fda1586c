"""Privacy-utility report of several anonymiser settings (Hydra entry point).

    ppa-privacy-report experiment=demo checkpoint=outputs/demo/latest/model_latest.pt
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
  `ppa.eval.evaluate.evaluate`; raw-raw once per checkpoint as the reference.

Faces are found by `ppa.anonymize.measures.FaceDetector`: OpenCV's LBP frontal-face cascade as
shipped with scikit-image (the pinned OpenCV wheel has no Haar cascade files). A face counts
"on the head" when a box centre lies in the KPR head mask.

Writes into `<output_dir>/privacy_report/`: `privacy_report.json` (every number, per setting,
per photo and per test group), `privacy_report.md` (the privacy-utility table),
`privacy_utility.png` (utility vs privacy), `samples.png` and `photos.png` (raw vs anonymised).
The last line printed is the path of privacy_report.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ppa.anonymize import KprAnonymizer
from ppa.anonymize.factory import anonymizer_class
from ppa.anonymize.measures import FaceDetector
from ppa.checkpoint import model_from_checkpoint
from ppa.config import effective_config, resolve_path
from ppa.data.keypoints import load_dataset_keypoints
from ppa.data.loader import Batch
from ppa.data.noise_keys import EVALUATOR, NoiseKeys, key_file
from ppa.data.protocols import dataset_root, test_settings
from ppa.device import DeviceSettings
from ppa.eval.evaluate import evaluate
from ppa.io import atomic_write_json, atomic_write_text
from ppa.model import PPAEncoder
from ppa.privacy_report.measure import dataset_batches, measure_batches, measure_photos
from ppa.privacy_report.output import (
    CASCADE_NOTE,
    Grids,
    format_markdown,
    jsonable,
    log_line,
    plot_report,
)
from ppa.privacy_report.photos import Photo, folder_photos, sample_photos
from ppa.privacy_report.settings import AnonymizerSetting, trained_with
from ppa.seeding import seed_everything

logger = logging.getLogger(__name__)

REPORT_DIR = "privacy_report"
UTILITY_PROTOCOLS = ("anon-anon", "raw-anon")


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
    """The setting's KPR anonymiser (a trained one's weights come from its checkpoint)."""
    anonymizer = KprAnonymizer.from_config(run_cfg).to(device)
    if anonymizer.anonymizer.trainable:
        if "anonymizer" not in payload:
            raise ValueError(
                f"setting {setting.label!r}: a {setting.name} anonymiser needs the weights trained "
                f"with the model; checkpoint {setting.checkpoint} holds none"
            )
        anonymizer.load_state_dict(payload["anonymizer"])
    return anonymizer.eval()


def run(cfg: DictConfig) -> Path:
    """Measure every setting; write the JSON, markdown table, plot and grids; return the JSON."""
    rc = cfg.privacy_report
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
    # The test images are the evaluator's: one key for every noise setting of the report.
    noise_keys = (
        NoiseKeys.from_file(key_file(cfg.anonymizer, EVALUATOR))
        if any(anonymizer_class({"name": s.name}).needs_keys for s in settings)
        else None
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
                batches[size] = dataset_batches(
                    run_cfg, tests, int(rc.images), keypoints, noise_keys
                )
            measured = measure_batches(
                batches[size], anonymizer, device, detector, int(rc.grid_samples)
            )
            row["dataset"] = measured.scores
            sample_grid.add(setting.label, measured.raw, measured.anon)
        if photos:
            measured = measure_photos(photos, anonymizer, device, detector, noise_keys)
            row["photos"] = {**measured.scores, "per_photo": measured.per_image}
            photo_grid.add(setting.label, measured.raw, measured.anon)
        if utility and model is not None:
            key = str(setting.checkpoint)
            if key not in reference:
                reference[key] = evaluate(
                    model,
                    run_cfg,
                    device=device_settings,
                    protocols=["raw-raw"],
                    settings=tests,
                    progress=False,
                ).numbers()
            row["utility"] = evaluate(
                model,
                run_cfg,
                device=device_settings,
                protocols=list(UTILITY_PROTOCOLS),
                anonymizer=anonymizer,
                keypoints=keypoints,
                noise_keys=noise_keys,
                settings=tests,
                progress=False,
            ).numbers()
        rows.append(row)
        logger.info("%s: %s", setting.label, log_line(row, tests[0].group))

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
    atomic_write_text(files["markdown"], f"# Privacy-utility report\n\n{table}")
    atomic_write_json(files["json"], jsonable(report), indent=2, allow_nan=False)
    print(table)
    return files["json"]
