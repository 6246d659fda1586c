"""Central evaluation of the global model, and the per-round metrics history (JSON + PNG)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import matplotlib.pyplot as plt
from omegaconf import DictConfig

from ppa.anonymize import KprAnonymizer
from ppa.anonymize.factory import noise_keys_for
from ppa.data.keypoints import load_dataset_keypoints
from ppa.data.noise_keys import EVALUATOR
from ppa.data.protocols import dataset_root, test_settings
from ppa.device import DeviceSettings
from ppa.eval.camera_statistics import CameraStatistics
from ppa.eval.evaluate import PRIVACY_PROTOCOLS, evaluate
from ppa.eval.report import EvaluationReport
from ppa.io import atomic_write_json
from ppa.model import PPAEncoder

logger = logging.getLogger(__name__)


class CentralEvaluator:
    """Evaluates a model on the dataset's test protocol; test splits and keypoints load once."""

    def __init__(self, cfg: DictConfig, device: DeviceSettings, protocols: list[str]):
        self.cfg = cfg
        self.device = device
        self.protocols = protocols
        self.settings = test_settings(cfg.dataset)
        needs_anon = any(PRIVACY_PROTOCOLS[p][i] == "anon" for p in protocols for i in (0, 1))
        self.keypoints = None
        self.anonymizer = None
        self.noise_keys = None
        if needs_anon:
            self.keypoints = load_dataset_keypoints(
                dataset_root(cfg.dataset),
                cfg.dataset.keypoints,
                required=cfg.pose.missing == "error",
            )
            self.anonymizer = KprAnonymizer.from_config(cfg).to(device.device)
            # The test set is the evaluator's: anonymised under its own key, not a site's.
            self.noise_keys = noise_keys_for(cfg, EVALUATOR)

    def __call__(
        self,
        model: PPAEncoder,
        progress: bool = False,
        camera_statistics: CameraStatistics | None = None,
    ) -> EvaluationReport:
        """`camera_statistics`: per-camera BatchNorm statistics of `model` from the statistics
        round, for eval.camera_statistics=training (never measured here: the server holds no
        training images; cameras without them keep the model's own)."""
        return evaluate(
            model,
            self.cfg,
            device=self.device,
            protocols=self.protocols,
            anonymizer=self.anonymizer,
            keypoints=self.keypoints,
            noise_keys=self.noise_keys,
            settings=self.settings,
            progress=progress,
            camera_statistics={} if camera_statistics is None else camera_statistics,
        )


class MetricsHistory:
    """Per-round records (training metrics, site events, central metrics) with JSON + plot."""

    def __init__(self, records: list[dict] | None = None):
        self.records: list[dict] = list(records or [])

    def append(self, record: dict) -> None:
        self.records.append(record)

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, {"rounds": self.records}, indent=2)

    def plot(self, path: str | os.PathLike, title: str = "") -> Path | None:
        """mAP and Rank-1 per round for each evaluated protocol."""
        evaluated = [r for r in self.records if r.get("central")]
        if not evaluated:
            return None
        protocols = sorted({p for r in evaluated for p in r["central"]})
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, metric, label in ((axes[0], "mAP", "mAP"), (axes[1], "rank1", "Rank-1")):
            for protocol in protocols:
                pts = [
                    (r["round"], r["central"][protocol][metric])
                    for r in evaluated
                    if protocol in r["central"]
                ]
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=protocol)
            ax.set_xlabel("round")
            ax.set_ylabel(f"{label} (%)")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(title or "central evaluation of the global model")
        fig.tight_layout()
        target = Path(path)
        fig.savefig(target, dpi=100)
        plt.close(fig)
        return target
