"""Records on disk -> `Batch` tensors: the dataset, its collate function and loader factories.

Images come out in [0, 1], not normalised, with their keypoints mapped into network-input
pixels; `ppa.data.transforms.normalize` runs on the device after anonymisation.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ppa.data.noise_keys import NoiseKeys
from ppa.data.epoch_length import batches_per_epoch
from ppa.data.errors import CorruptImageError
from ppa.data.image_cache import DecodedImageCache
from ppa.data.images import read_image
from ppa.data.keypoints import KeypointCache, MissingKeypointsError
from ppa.data.records import ImageRecord, TrainRecord
from ppa.data.sampler import IdentitySampler
from ppa.data.transforms import ReidTransform, build_eval_transform, build_train_transform
from ppa.pose.coco import NUM_KEYPOINTS
from ppa.pose.prior import canonical_keypoints

logger = logging.getLogger(__name__)

POSE_MISSING: tuple[str, ...] = ("error", "skip", "center_prior")
LABEL_KINDS: tuple[str, ...] = ("train", "pid")
ON_BAD_IMAGE: tuple[str, ...] = ("error", "skip")
# How many skipped paths a summary warning lists before eliding the rest.
_MAX_LISTED = 5


@dataclass
class Batch:
    """A collated batch (see docs/architecture.md)."""

    images: Tensor  # (B, 3, H, W) float32 in [0, 1], NOT normalised
    keypoints: Tensor  # (B, 17, 3) x, y in network-input pixels, score (0 = missing)
    labels: Tensor  # (B,) long: training label (train loaders) or original pid (eval loaders)
    modality: Tensor  # (B,) long: Modality.index
    cams: Tensor  # (B,) long
    # (B, 32) uint8: each image's secret noise key (ppa.data.noise_keys), or (B, 0) when loaded
    # without its owner's NoiseKeys (then only deterministic anonymisers apply).
    noise_keys: Tensor
    indices: Tensor  # (B,) long: position in the record list the loader was built from

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on `device`."""
        return Batch(
            **{
                f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                for f in fields(self)
            }
        )

    def pin_memory(self) -> Batch:
        """Page-locked copy; DataLoader(pin_memory=True) calls this on custom batch types."""
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def rows(self, start: int, stop: int) -> Batch:
        """Rows start..stop-1 of every field (views, not copies)."""
        return Batch(**{f.name: getattr(self, f.name)[start:stop] for f in fields(self)})

    def __len__(self) -> int:
        return int(self.images.shape[0])


class Sample(NamedTuple):
    """One transformed image, as `ReidImageDataset` returns it."""

    image: Tensor  # (3, H, W) float32 in [0, 1]
    keypoints: Tensor  # (17, 3) float32
    label: int
    modality: int
    cam: int
    noise_key: bytes  # 32 bytes, or empty when the dataset has no NoiseKeys
    index: int


def augmentation_seed(relative_path: str) -> int:
    """Default seed of an image's random transform (when the sampler gives none): CRC32 of the
    relative path, the same on every machine and run. Public, so never used for anonymisation
    (that draws from the secret `NoiseKeys`)."""
    return zlib.crc32(relative_path.encode("utf-8"))


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples into a Batch."""
    if not samples:
        raise ValueError("cannot collate an empty batch")

    def longs(values: Sequence[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long)

    return Batch(
        images=torch.stack([s.image for s in samples]),
        keypoints=torch.stack([s.keypoints for s in samples]),
        labels=longs([s.label for s in samples]),
        modality=longs([s.modality for s in samples]),
        cams=longs([s.cam for s in samples]),
        noise_keys=torch.tensor(
            [list(s.noise_key) for s in samples], dtype=torch.uint8
        ).view(len(samples), len(samples[0].noise_key)),
        indices=longs([s.index for s in samples]),
    )


class ReidImageDataset(Dataset[Sample]):
    """Images of a record list with their keypoints, transformed.

    Items are addressed by position (in `self.records`) or by a ``(position, aug_seed)`` pair,
    as `IdentitySampler` yields them; the random transform draws from ``aug_seed`` (else from
    `augmentation_seed` of the path). With `noise_keys` (the images' owner's), each sample
    carries its image's secret noise key; without, an empty one. `Sample.index` is the record's position in the list passed in, which
    differs from its position here when records were dropped.

    Missing keypoints (`pose_missing`): ``error`` raises MissingKeypointsError at construction
    naming the cache file and image; ``skip`` drops the record with a warning; ``center_prior``
    uses `canonical_keypoints` scaled to the image. ``keypoints=None`` gives every joint score 0.
    Unreadable images (`on_bad_image`): ``error`` raises CorruptImageError naming the file when
    the image is read; ``skip`` decodes every image once, now, and drops (and warns about)
    each unreadable one. `image_cache`: decoded images kept from one read (and one loader) to
    the next; None decodes every read.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        records: Sequence[ImageRecord | TrainRecord],
        transform: ReidTransform,
        keypoints: KeypointCache | None = None,
        pose_missing: str = "error",
        label_kind: str = "train",
        on_bad_image: str = "error",
        noise_keys: NoiseKeys | None = None,
        image_cache: DecodedImageCache | None = None,
    ):
        _check_choice("pose_missing", pose_missing, POSE_MISSING)
        _check_choice("label_kind", label_kind, LABEL_KINDS)
        _check_choice("on_bad_image", on_bad_image, ON_BAD_IMAGE)
        self.root = Path(root)
        self.transform = transform
        self.keypoints = keypoints
        self.pose_missing = pose_missing
        self.label_kind = label_kind
        self.noise_keys = noise_keys
        self.image_cache = image_cache
        if label_kind == "train":
            unlabelled = next((r for r in records if not isinstance(r, TrainRecord)), None)
            if unlabelled is not None:
                raise TypeError(
                    f"label_kind='train' needs TrainRecords, {unlabelled.path!r} "
                    f"is a {type(unlabelled).__name__} (use label_kind='pid')"
                )
        positions = list(range(len(records)))
        if keypoints is not None and pose_missing != "center_prior":
            positions = self._with_keypoints(records, positions)
        if on_bad_image == "skip":
            positions = self._readable(records, positions)
        self.records: list[ImageRecord | TrainRecord] = [records[i] for i in positions]
        self.source_indices: list[int] = positions

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | tuple[int, int]) -> Sample:
        position, aug_seed = item if isinstance(item, tuple) else (item, None)
        record = self.records[position]
        image = self._read(record)
        points = self._keypoints_of(record, image.shape[0], image.shape[1])
        rng = (
            np.random.default_rng(
                augmentation_seed(record.path) if aug_seed is None else aug_seed
            )
            if self.transform.is_random
            else None
        )
        tensor, points_t = self.transform(image, points, rng)
        label = record.label if self.label_kind == "train" else record.pid  # type: ignore[union-attr]
        return Sample(
            tensor,
            points_t,
            int(label),
            record.modality.index,
            int(record.cam),
            self.noise_keys.key_of(record.path) if self.noise_keys is not None else b"",
            self.source_indices[position],
        )

    def _keypoints_of(
        self, record: ImageRecord | TrainRecord, height: int, width: int
    ) -> np.ndarray:
        if self.keypoints is None:
            return np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
        if record.path in self.keypoints:
            points = self.keypoints[record.path]
            # A crop where the pose backend found no person is cached with all scores 0:
            # with the prior configured, treat it like a missing entry.
            if self.pose_missing == "center_prior" and not (points[:, 2] > 0).any():
                return canonical_keypoints(height, width)
            return points
        if self.pose_missing == "center_prior":
            return canonical_keypoints(height, width)
        # Construction removed or rejected these; reaching here means the cache changed since.
        raise MissingKeypointsError(self.keypoints.path, record.path)

    def _with_keypoints(
        self, records: Sequence[ImageRecord | TrainRecord], positions: list[int]
    ) -> list[int]:
        assert self.keypoints is not None
        missing = [i for i in positions if records[i].path not in self.keypoints]
        if not missing:
            return positions
        if self.pose_missing == "error":
            raise MissingKeypointsError(self.keypoints.path, records[missing[0]].path)
        shown = ", ".join(records[i].path for i in missing[:_MAX_LISTED])
        logger.warning(
            "pose.missing=skip: dropping %d of %d images without keypoints in %s (%s%s)",
            len(missing),
            len(positions),
            self.keypoints.path or "<in-memory cache>",
            shown,
            ", ..." if len(missing) > _MAX_LISTED else "",
        )
        dropped = set(missing)
        return [i for i in positions if i not in dropped]

    def _read(self, record: ImageRecord | TrainRecord) -> np.ndarray:
        path = self.root / record.path
        return read_image(path) if self.image_cache is None else self.image_cache.read(path)

    def _readable(
        self, records: Sequence[ImageRecord | TrainRecord], positions: list[int]
    ) -> list[int]:
        kept = []
        for i in positions:
            try:
                # Through the cache: a site's new dataset each round checks from memory.
                self._read(records[i])
            except CorruptImageError as err:
                logger.warning("on_bad_image=skip: dropping %s", err)
                continue
            kept.append(i)
        return kept


def resolve_pin_memory(setting: bool | str) -> bool:
    """``train.pin_memory``: true/false, or ``auto`` = on only when CUDA is available."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return torch.cuda.is_available()
    raise ValueError(f"pin_memory must be true, false or 'auto', got {setting!r}")


def create_train_loader(
    records: Sequence[TrainRecord],
    root: str | os.PathLike,
    *,
    input_cfg: Any,
    train_cfg: Any,
    pose_cfg: Any,
    keypoints: KeypointCache | None,
    seed: int,
    on_bad_image: str = "error",
    noise_keys: NoiseKeys | None = None,
    image_cache: DecodedImageCache | None = None,
) -> DataLoader:
    """Training loader: IdentitySampler batches (P=train.num_ids, K=train.num_instances per
    modality) with the augmenting transform of ``train.augment``.

    Call ``loader.batch_sampler.set_epoch(epoch)`` before each epoch. `noise_keys`: the
    site's, when its anonymiser draws noise. `image_cache`: decoded images shared with the
    caller's other loaders (a site's rounds), see `DecodedImageCache`.
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
        image_cache=image_cache,
    )
    if not dataset.records:
        raise ValueError(
            f"no usable training images under {root} (all {len(records)} records dropped)"
        )
    max_batches = train_cfg.get("max_batches_per_epoch")
    modalities = [r.modality for r in dataset.records]
    try:
        sampler = IdentitySampler(
            [r.label for r in dataset.records],  # type: ignore[union-attr]
            modalities,
            num_ids=int(train_cfg.num_ids),
            num_instances=int(train_cfg.num_instances),
            seed=seed,
            num_batches=batches_per_epoch(
                modalities,
                int(train_cfg.num_ids),
                int(train_cfg.num_instances),
                str(train_cfg.get("epoch_length", "records")),
            ),
            max_batches=None if max_batches is None else int(max_batches),
        )
    except ValueError as err:
        # The sampler knows labels, not where they came from: name the data (e.g. a site's
        # root holding a single identity).
        identities = len({r.pid for r in dataset.records})
        raise ValueError(
            f"cannot train on the {len(dataset.records)} images of {identities} identities "
            f"under {root}: {err}"
        ) from err
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=int(train_cfg.num_workers),
        collate_fn=collate,
        pin_memory=resolve_pin_memory(train_cfg.pin_memory),
        # Workers survive across epochs (the sampler runs in the main process, so set_epoch
        # still applies); re-forking them every epoch costs more than a small epoch's work.
        persistent_workers=int(train_cfg.num_workers) > 0,
    )


def create_eval_loader(
    records: Sequence[ImageRecord | TrainRecord],
    root: str | os.PathLike,
    *,
    input_cfg: Any,
    batch_size: int,
    num_workers: int,
    pose_cfg: Any,
    keypoints: KeypointCache | None,
    on_bad_image: str = "error",
    pin_memory: bool | str = "auto",
    label_kind: str = "pid",
    noise_keys: NoiseKeys | None = None,
) -> DataLoader:
    """Loader in record order with the resize-only transform: evaluation (labels = original
    pids) and one-pass-over-every-record uses such as the DP prototype release
    (``label_kind="train"``: training labels). `noise_keys`: the images' owner's, when they
    are to be anonymised with noise."""
    dataset = ReidImageDataset(
        root,
        records,
        build_eval_transform(input_cfg),
        keypoints=keypoints,
        pose_missing=str(pose_cfg.missing),
        label_kind=label_kind,
        on_bad_image=on_bad_image,
        noise_keys=noise_keys,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=resolve_pin_memory(pin_memory),
    )


def create_statistics_loader(
    records: Sequence[ImageRecord | TrainRecord], root: str | os.PathLike, cfg: Any
) -> DataLoader:
    """Raw training images for measuring BatchNorm statistics as the statistics round does:
    in batches of a training batch's size (training-mode statistics are per batch, so the
    batch size is part of what is measured), no keypoints, no anonymisation."""
    return create_eval_loader(
        records,
        root,
        input_cfg=cfg.input,
        batch_size=int(cfg.train.num_ids) * int(cfg.train.num_instances),
        num_workers=0,
        pose_cfg=cfg.pose,
        keypoints=None,
        on_bad_image=str(cfg.dataset.on_bad_image),
    )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
