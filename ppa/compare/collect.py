"""Results of finished comparison jobs: the federated history and the central checkpoints.

The federated run evaluates itself (its server's central evaluation, `history.json`); the
centralised run's checkpoints are evaluated here with the same function (`ppa.evaluation`),
the same protocols and the same test settings, so both curves measure the same thing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from ppa.anonymize import KprAnonymizer
from ppa.anonymize.factory import noise_keys_for
from ppa.checkpoint import model_from_checkpoint
from ppa.compare.plan import Job
from ppa.compare.table import Curve
from ppa.data.keypoints import load_dataset_keypoints
from ppa.data.noise_keys import EVALUATOR
from ppa.data.protocols import dataset_root, test_settings
from ppa.device import DeviceSettings
from ppa.eval.evaluate import PRIVACY_PROTOCOLS, evaluate
from ppa.eval.report import EvaluationReport

logger = logging.getLogger(__name__)

HEADLINE = ("mAP", "rank1", "mINP")


def headline(report: EvaluationReport) -> dict[str, dict[str, float]]:
    """protocol -> the first group's mean mAP / rank1 / mINP (SYSU all-search)."""
    return {
        protocol: {k: float(numbers[k]) for k in HEADLINE}
        for protocol, numbers in report.headlines().items()
    }


def federated_curve(job: Job, local_epochs: int) -> Curve:
    """epoch -> numbers, from the run's history.json (round r = epoch r x local_epochs)."""
    path = job.output_dir / "history.json"
    if not path.is_file():
        raise FileNotFoundError(f"{job.name}: {path} was not written (see {job.output_dir})")
    rounds = json.loads(path.read_text())["rounds"]
    curve: Curve = {}
    for record in rounds:
        if record.get("central"):
            curve[int(record["round"]) * local_epochs] = {
                p: {k: float(v[k]) for k in HEADLINE} for p, v in record["central"].items()
            }
    return curve


class CheckpointEvaluator:
    """Evaluates centralised checkpoints; test settings, keypoints and anonymiser load once."""

    def __init__(self, cfg: DictConfig, protocols: list[str]):
        self.cfg = cfg
        self.protocols = protocols
        self.device = DeviceSettings.from_config(cfg)
        self.settings = test_settings(cfg.dataset)
        needs_anon = any(PRIVACY_PROTOCOLS[p][i] == "anon" for p in protocols for i in (0, 1))
        self.keypoints = self.anonymizer = self.noise_keys = None
        if needs_anon:
            self.keypoints = load_dataset_keypoints(
                dataset_root(cfg.dataset),
                cfg.dataset.keypoints,
                required=cfg.pose.missing == "error",
            )
            self.anonymizer = KprAnonymizer.from_config(cfg).to(self.device.device)
            self.noise_keys = noise_keys_for(cfg, EVALUATOR)

    def __call__(self, path: Path) -> dict[str, dict[str, float]]:
        model, _ = model_from_checkpoint(path, self.cfg.model)
        self.device.place(model)
        report = evaluate(
            model,
            self.cfg,
            device=self.device,
            protocols=self.protocols,
            anonymizer=self.anonymizer,
            keypoints=self.keypoints,
            noise_keys=self.noise_keys,
            settings=self.settings,
            progress=False,
        )
        return headline(report)


def central_curve(job: Job, evaluator: CheckpointEvaluator) -> Curve:
    """epoch -> numbers for every evaluation epoch of the job (its epoch_XXXX.pt checkpoints,
    `last.pt` for the budget)."""
    ckpts = job.output_dir / "checkpoints"
    curve: Curve = {}
    for epoch in job.eval_epochs:
        path = ckpts / f"epoch_{epoch:04d}.pt"
        if not path.is_file() and epoch == job.budget:
            path = ckpts / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{job.name}: checkpoint {path} was not written")
        curve[epoch] = evaluator(path)
        logger.info(
            "%s epoch %d: %s",
            job.name,
            epoch,
            " | ".join(f"{p} mAP {100 * v['mAP']:.2f}" for p, v in curve[epoch].items()),
        )
    return curve
