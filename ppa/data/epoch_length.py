"""How many P x K batches make one training epoch (``train.epoch_length``).

``records``: about one pass over the records, ``N / (M * P * K)`` for M modalities (a batch
holds P x K images of each modality present). ``agw``: the reference VI-ReID definition (AGW
and its followers), ``max(N_visible, N_infrared) / (P * K)``: the larger modality is seen
about once per epoch; on SYSU-MM01 (22,258 visible, 11,909 infrared training images) that is
about 30 % more steps per epoch than ``records``. Reported numbers name the rule they used.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

EPOCH_LENGTHS: tuple[str, ...] = ("records", "agw")


def batches_per_epoch(
    modalities: Sequence[Hashable], num_ids: int, num_instances: int, rule: str
) -> int | None:
    """Batches per epoch under `rule` for records of these modalities; None for
    ``records`` (the sampler's own one-pass count)."""
    if rule not in EPOCH_LENGTHS:
        raise ValueError(f"train.epoch_length must be one of {EPOCH_LENGTHS}, got {rule!r}")
    if rule == "records":
        return None
    if num_ids < 1 or num_instances < 1:
        raise ValueError(
            f"train.num_ids and train.num_instances must be >= 1, got {num_ids}, {num_instances}"
        )
    counts = Counter(modalities)
    if not counts:
        raise ValueError("batches_per_epoch: no training records")
    return max(1, max(counts.values()) // (num_ids * num_instances))
