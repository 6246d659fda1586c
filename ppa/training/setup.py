"""The one training set-up: train records -> keypoints -> model -> anonymiser -> loader.

Central training, DP central training and a federated site all build their run from a
`TrainingSetup`, so the pieces are made the same way (and in the same order: the model's
initialisation draws from the seeded torch generator before the anonymiser's) everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ppa.anonymize import KprAnonymizer
from ppa.anonymize.factory import noise_keys_for
from ppa.data.image_cache import DecodedImageCache
from ppa.data.keypoints import KeypointCache, load_dataset_keypoints
from ppa.data.loader import create_train_loader
from ppa.data.noise_keys import NoiseKeys
from ppa.data.records import TrainRecord
from ppa.device import DeviceSettings
from ppa.model import PPAEncoder, create_model
from ppa.model.finetune import FinetuneSettings, prepare_finetune
from ppa.training.objective import PPAObjective
from ppa.training.step import StepContext


@dataclass
class TrainingSetup:
    """The model, anonymiser and keypoints of a run over images under `root`, the noise
    keys of the images' owner when the anonymiser draws noise, and the decoded training images
    its loaders share (``train.image_cache_mb``; None: decoded at every read)."""

    cfg: DictConfig
    objective: PPAObjective
    device: DeviceSettings
    root: Path
    num_classes: int
    keypoints: KeypointCache | None
    model: PPAEncoder
    anonymizer: KprAnonymizer | None
    noise_keys: NoiseKeys | None = None
    image_cache: DecodedImageCache | None = None

    @classmethod
    def create(cls, cfg: DictConfig, *, root: Path, num_classes: int, owner: str) -> TrainingSetup:
        """Keypoints (when the objective anonymises), the placed model, the KPR anonymiser and
        `owner`'s noise keys (a site's name, or `ppa.data.noise_keys.CENTRAL`)."""
        objective = PPAObjective.from_config(cfg.ppa)
        device = DeviceSettings.from_config(cfg)
        needs_pose = objective.anonymized_view
        keypoints = (
            load_dataset_keypoints(
                root, cfg.dataset.keypoints, required=cfg.pose.missing == "error"
            )
            if needs_pose
            else None
        )
        model = device.place(create_model(cfg.model, num_classes))
        # privacy.finetune: what a fine-tuned public start trains and whether its BatchNorm is
        # frozen, the same with DP (privacy=dp_finetune) and without (privacy=finetune, the
        # privacy-utility curve's reference); the step-shaping keys exist under DP only.
        finetune = FinetuneSettings.from_config(cfg)
        if not cfg.privacy.get("enabled", False):
            finetune = finetune.without_dp_steps()
        prepare_finetune(model, finetune)
        anonymizer = KprAnonymizer.from_config(cfg).to(device.device) if needs_pose else None
        noise_keys = noise_keys_for(cfg, owner) if needs_pose else None
        return cls(
            cfg,
            objective,
            device,
            root,
            num_classes,
            keypoints,
            model,
            anonymizer,
            noise_keys,
            DecodedImageCache.from_config(cfg.train),
        )

    def step_context(self, **fields: Any) -> StepContext:
        """A step context over this set-up's model, objective, anonymiser and device."""
        return StepContext.from_config(
            self.cfg,
            model=self.model,
            objective=self.objective,
            anonymizer=self.anonymizer,
            device=self.device,
            **fields,
        )

    def train_loader(self, records: Sequence[TrainRecord], *, seed: int):
        """P x K identity batches over `records` (`cfg.train`)."""
        cfg = self.cfg
        return create_train_loader(
            records,
            self.root,
            input_cfg=cfg.input,
            train_cfg=cfg.train,
            pose_cfg=cfg.pose,
            keypoints=self.keypoints,
            seed=seed,
            on_bad_image=str(cfg.dataset.on_bad_image),
            noise_keys=self.noise_keys,
            image_cache=self.image_cache,
        )
