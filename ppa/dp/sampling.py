"""Poisson sampling of a site's records: what the accountant's subsampling analysis assumes.

Every step includes each record independently with probability q, so batch sizes vary and a
batch may be empty (the step then adds noise only). This replaces the identity-balanced
P x K sampler under DP, which picks records by label and is not covered by the analysis.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ppa.data.keypoints import KeypointCache
from ppa.data.loader import (
    Batch,
    ReidImageDataset,
    Sample,
    collate,
    create_eval_loader,
    resolve_pin_memory,
)
from ppa.data.noise_keys import NoiseKeys, no_noise_keys
from ppa.data.records import TrainRecord
from ppa.data.transforms import build_train_transform
from ppa.pose.coco import NUM_KEYPOINTS

logger = logging.getLogger(__name__)

_SEED_HIGH = 2**31 - 1


class PoissonBatchSampler(Sampler[list[tuple[int, int]]]):
    """`steps` batches per epoch, each record in a batch with probability `sample_rate`.

    Yields lists of ``(index, aug_seed)`` pairs like `IdentitySampler`; batches are a function
    of (seed, epoch) only: call `set_epoch`.
    """

    def __init__(
        self,
        num_records: int,
        sample_rate: float,
        steps: int,
        seed: int = 0,
        multiplicity: int = 1,
    ):
        super().__init__()
        if multiplicity < 1:
            raise ValueError(f"augmentation multiplicity must be >= 1, got {multiplicity}")
        if num_records < 1:
            raise ValueError(f"Poisson sampling needs records, got {num_records}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
        if steps < 1:
            raise ValueError(f"steps per epoch must be >= 1, got {steps}")
        self.num_records = int(num_records)
        self.sample_rate = float(sample_rate)
        self.steps = int(steps)
        self.seed = int(seed)
        self.multiplicity = int(multiplicity)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed % 2**63, self.epoch])
        for _ in range(self.steps):
            chosen = np.flatnonzero(rng.random(self.num_records) < self.sample_rate)
            # Augmentation multiplicity: each drawn record K times in a row, K augmentations.
            rows = np.repeat(chosen, self.multiplicity)
            aug = rng.integers(0, _SEED_HIGH, size=rows.size)
            yield [(int(i), int(s)) for i, s in zip(rows, aug, strict=True)]


def collate_or_empty(samples: Sequence[Sample], height: int, width: int) -> Batch:
    """`collate`, or a zero-length Batch of the right shapes for an empty Poisson draw."""
    if samples:
        return collate(samples)
    empty = torch.zeros(0, dtype=torch.long)
    return Batch(
        images=torch.zeros(0, 3, height, width),
        keypoints=torch.zeros(0, NUM_KEYPOINTS, 3),
        labels=empty,
        modality=empty.clone(),
        cams=empty.clone(),
        noise_keys=no_noise_keys(0),
        indices=empty.clone(),
    )


def steps_per_epoch(sample_rate: float, max_batches: int | None = None) -> int:
    """1 / q steps make one expected pass over the records (opacus's convention)."""
    steps = max(1, int(1.0 / sample_rate))
    return min(steps, int(max_batches)) if max_batches is not None else steps


def create_poisson_loader(
    records: Sequence[TrainRecord],
    root: str | os.PathLike,
    *,
    input_cfg: Any,
    train_cfg: Any,
    pose_cfg: Any,
    keypoints: KeypointCache | None,
    expected_batch_size: int,
    seed: int,
    on_bad_image: str = "error",
    multiplicity: int = 1,
    noise_keys: NoiseKeys | None = None,
) -> DataLoader:
    """Training loader for DP-SGD: Poisson batches of expected size `expected_batch_size`
    (records; with `multiplicity` K each drawn record comes K times, differently augmented).

    The sample rate is ``expected_batch_size / len(usable records)`` (capped at 1); an epoch
    has ``1 / rate`` steps, capped at ``train.max_batches_per_epoch``. The sampler
    (``loader.batch_sampler``) carries ``sample_rate``, ``steps`` and ``num_records``.
    """
    dataset = ReidImageDataset(
        root,
        records,
        build_train_transform(input_cfg, train_cfg.augment),
        keypoints=keypoints,
        pose_missing=str(pose_cfg.missing),
        label_kind="train",
        on_bad_image=on_bad_image,
        noise_keys=noise_keys,
    )
    if not dataset.records:
        raise ValueError(
            f"no usable training images under {root} (all {len(records)} records dropped)"
        )
    num = len(dataset.records)
    rate = min(1.0, float(expected_batch_size) / num)
    max_batches = train_cfg.get("max_batches_per_epoch")
    sampler = PoissonBatchSampler(
        num, rate, steps_per_epoch(rate, max_batches), seed=seed, multiplicity=multiplicity
    )
    workers = int(train_cfg.num_workers)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=functools.partial(
            collate_or_empty, height=int(input_cfg.height), width=int(input_cfg.width)
        ),
        pin_memory=resolve_pin_memory(train_cfg.pin_memory),
        persistent_workers=workers > 0,
    )


def create_release_loader(
    records: Sequence[TrainRecord],
    root: str | os.PathLike,
    *,
    input_cfg: Any,
    pose_cfg: Any,
    keypoints: KeypointCache | None,
    batch_size: int,
    num_workers: int = 0,
    on_bad_image: str = "error",
    noise_keys: NoiseKeys | None = None,
) -> DataLoader:
    """One pass over the records, each exactly once, resize-only: the prototype release."""
    return create_eval_loader(
        records,
        root,
        input_cfg=input_cfg,
        batch_size=batch_size,
        num_workers=num_workers,
        pose_cfg=pose_cfg,
        keypoints=keypoints,
        on_bad_image=on_bad_image,
        pin_memory=False,
        noise_keys=noise_keys,
        label_kind="train",
    )
