"""Identity-balanced batch sampler: P identities x K images per modality in every batch."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ppa.data.records import Modality

logger = logging.getLogger(__name__)

# Augmentation seeds are drawn in [0, 2**31 - 1) so they fit every integer type they meet.
_SEED_HIGH = 2**31 - 1
# A batch needs a positive and a negative identity for the triplet loss.
MIN_USABLE_LABELS = 2


class IdentitySampler(Sampler[list[tuple[int, int]]]):
    """Batch sampler yielding lists of ``(index, aug_seed)`` pairs.

    Each batch holds `num_ids` (P) distinct labels and, for every modality present in the
    records, `num_instances` (K) images of each label: P*K per batch for a one-modality site,
    2*P*K for a two-modality set; ordered modality by modality (Modality order), label by
    label. Only labels present in every modality are drawn. Labels cycle through shuffled
    orders so each appears about equally often; a label's images of one modality cycle the same
    way, drawn with replacement only when it has fewer than K.

    `aug_seed` comes from the sampler's own RNG, so augmentation does not depend on the number
    of DataLoader workers. Batches are a function of (seed, epoch) only: call `set_epoch`.
    When fewer than P labels are usable, every batch holds all of them.

    An epoch has `num_batches` batches if given, else about one pass over the records
    (``len(labels) // batch_size``, at least 1), capped at `max_batches`.
    """

    def __init__(
        self,
        labels: Sequence[int],
        modalities: Sequence[Modality | int],
        num_ids: int,
        num_instances: int,
        seed: int = 0,
        num_batches: int | None = None,
        max_batches: int | None = None,
    ):
        super().__init__()
        if len(labels) != len(modalities):
            raise ValueError(
                f"labels ({len(labels)}) and modalities ({len(modalities)}) "
                "must have the same length"
            )
        if num_ids < 1 or num_instances < 1:
            raise ValueError(
                f"num_ids and num_instances must be >= 1, got P={num_ids}, K={num_instances}"
            )
        if seed < 0:
            raise ValueError(f"sampler seed must be non-negative, got {seed}")
        for name, value in (("num_batches", num_batches), ("max_batches", max_batches)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        label_array = np.asarray(labels, dtype=np.int64)
        modality_array = np.array(
            [m.index if isinstance(m, Modality) else int(m) for m in modalities], dtype=np.int64
        )
        self.modalities: tuple[int, ...] = tuple(int(m) for m in np.unique(modality_array))
        self._pools: dict[tuple[int, int], np.ndarray] = {}
        for modality in self.modalities:
            in_modality = np.flatnonzero(modality_array == modality)
            for label in np.unique(label_array[in_modality]):
                self._pools[(int(label), modality)] = in_modality[label_array[in_modality] == label]
        present = [
            {label for label, m in self._pools if m == modality} for modality in self.modalities
        ]
        self.labels: tuple[int, ...] = tuple(sorted(set.intersection(*present))) if present else ()
        if len(self.labels) < MIN_USABLE_LABELS:
            raise ValueError(
                f"IdentitySampler needs at least {MIN_USABLE_LABELS} labels present in every "
                f"modality ({self.modalities}), got {len(self.labels)} of {len(labels)} records"
            )
        unused = len(set(label_array.tolist())) - len(self.labels)
        if unused:
            logger.info("IdentitySampler: %d labels lack a modality and are never drawn", unused)
        self.num_ids = min(num_ids, len(self.labels))
        if self.num_ids < num_ids:
            logger.warning(
                "IdentitySampler: only %d usable labels, batches hold %d ids instead of P=%d",
                len(self.labels),
                self.num_ids,
                num_ids,
            )
        self.num_instances = num_instances
        self.batch_size = self.num_ids * num_instances * len(self.modalities)
        self.num_records = len(label_array)
        self.num_batches = num_batches or max(1, self.num_records // self.batch_size)
        if max_batches is not None:
            self.num_batches = min(self.num_batches, max_batches)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches `__iter__` yields."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        label_cycle = _Cycle(np.asarray(self.labels, dtype=np.int64), rng)
        image_cycles: dict[tuple[int, int], _Cycle] = {}
        for _ in range(self.num_batches):
            chosen = label_cycle.take(self.num_ids)
            indices: list[int] = []
            for modality in self.modalities:
                for label in chosen:
                    key = (int(label), modality)
                    if key not in image_cycles:
                        image_cycles[key] = _Cycle(self._pools[key], rng)
                    indices.extend(int(i) for i in image_cycles[key].take(self.num_instances))
            seeds = rng.integers(0, _SEED_HIGH, size=len(indices))
            yield [(index, int(seed)) for index, seed in zip(indices, seeds, strict=True)]


class _Cycle:
    """Distinct draws from a pool, reshuffling when fewer than asked remain.

    A pool smaller than the draw is sampled with replacement instead.
    """

    def __init__(self, pool: np.ndarray, rng: np.random.Generator):
        self._pool = pool
        self._rng = rng
        self._order = rng.permutation(pool)
        self._next = 0

    def take(self, count: int) -> np.ndarray:
        if len(self._pool) < count:
            return self._rng.choice(self._pool, size=count, replace=True)
        if self._next + count > len(self._order):
            self._order = self._rng.permutation(self._pool)
            self._next = 0
        taken = self._order[self._next : self._next + count]
        self._next += count
        return taken
