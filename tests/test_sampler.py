"""IdentitySampler: P x K structure per modality, usable labels, determinism, length."""

from __future__ import annotations

from collections import Counter

import pytest

from ppa.data.records import Modality
from ppa.data.sampler import IdentitySampler

V, IR = Modality.VISIBLE, Modality.INFRARED


def two_modality(num_labels=6, per_modality=4):
    labels, modalities = [], []
    for label in range(num_labels):
        for modality in (V, IR):
            labels += [label] * per_modality
            modalities += [modality] * per_modality
    return labels, modalities


def test_two_modality_batches_hold_p_labels_times_k_per_modality():
    labels, modalities = two_modality()
    sampler = IdentitySampler(labels, modalities, num_ids=3, num_instances=2, seed=0)
    assert sampler.batch_size == 12 and len(sampler) == 48 // 12
    for batch in sampler:
        assert len(batch) == 12
        indices = [i for i, _ in batch]
        visible, infrared = indices[:6], indices[6:]
        assert all(modalities[i] is V for i in visible)
        assert all(modalities[i] is IR for i in infrared)
        # Label-major within each modality: [a, a, b, b, c, c] and the same labels in IR.
        chosen = [labels[i] for i in visible[::2]]
        assert len(set(chosen)) == 3
        assert [labels[i] for i in visible] == [x for x in chosen for _ in range(2)]
        assert [labels[i] for i in infrared] == [labels[i] for i in visible]
        # K distinct images of a label when it has at least K.
        for start in range(0, 12, 2):
            assert indices[start] != indices[start + 1]


def test_one_modality_site_gets_p_times_k():
    labels = [0, 0, 1, 1, 1, 2, 2, 2, 2]
    sampler = IdentitySampler(labels, [IR] * len(labels), num_ids=2, num_instances=2, seed=3)
    assert sampler.modalities == (IR.index,)
    assert sampler.batch_size == 4 and len(sampler) == 2
    for batch in sampler:
        assert len(batch) == 4
        assert labels[batch[0][0]] == labels[batch[1][0]] != labels[batch[2][0]]


def test_labels_missing_a_modality_are_never_drawn():
    labels, modalities = two_modality(num_labels=3)
    labels += [7, 7, 7]
    modalities += [V, V, V]
    sampler = IdentitySampler(
        labels, modalities, num_ids=2, num_instances=1, seed=0, num_batches=30
    )
    assert sampler.labels == (0, 1, 2)
    drawn = {labels[i] for batch in sampler for i, _ in batch}
    assert drawn == {0, 1, 2}


def test_labels_cycle_evenly_and_images_cycle_before_repeating():
    labels, modalities = two_modality(num_labels=6, per_modality=4)
    sampler = IdentitySampler(labels, modalities, num_ids=2, num_instances=2, seed=5, num_batches=6)
    batches = list(sampler)
    counts = Counter(labels[i] for batch in batches for i, _ in batch[:4:2])
    assert counts == dict.fromkeys(range(6), 2)  # 6 batches x 2 ids = every label twice
    # The two uses of a label in one modality cover its 4 images.
    seen: dict[tuple[int, int], list[int]] = {}
    for batch in batches:
        for i, _ in batch:
            seen.setdefault((labels[i], modalities[i].index), []).append(i)
    for taken in seen.values():
        assert len(taken) == 4 and len(set(taken)) == 4


def test_fewer_images_than_k_are_drawn_with_replacement():
    labels = [0, 1, 1, 1, 1]
    sampler = IdentitySampler(labels, [V] * 5, num_ids=2, num_instances=3, seed=1)
    batch = next(iter(sampler))
    assert sorted(i for i, _ in batch if labels[i] == 0) == [0, 0, 0]
    assert len({i for i, _ in batch if labels[i] == 1}) == 3


def test_deterministic_for_seed_and_epoch():
    labels, modalities = two_modality(num_labels=8)

    def epoch(seed, number):
        sampler = IdentitySampler(labels, modalities, num_ids=2, num_instances=2, seed=seed)
        sampler.set_epoch(number)
        return list(sampler)

    assert epoch(0, 0) == epoch(0, 0)
    assert epoch(0, 1) == epoch(0, 1)
    assert epoch(0, 0) != epoch(0, 1)
    assert epoch(0, 0) != epoch(1, 0)
    seeds = [s for batch in epoch(0, 0) for _, s in batch]
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)
    assert len(set(seeds)) > len(seeds) // 2


def test_length_and_caps():
    labels, modalities = two_modality(num_labels=6, per_modality=4)  # 48 records
    assert len(IdentitySampler(labels, modalities, 2, 2)) == 48 // 8
    assert len(IdentitySampler(labels, modalities, 8, 4)) == 1  # P clipped to 6 -> 48/48
    assert len(IdentitySampler(labels, modalities, 2, 2, num_batches=11)) == 11
    assert len(IdentitySampler(labels, modalities, 2, 2, max_batches=2)) == 2
    assert len(list(IdentitySampler(labels, modalities, 2, 2, max_batches=2))) == 2
    clipped = IdentitySampler(labels, modalities, num_ids=10, num_instances=1)
    assert clipped.num_ids == 6 and len(next(iter(clipped))) == 12


def test_errors():
    with pytest.raises(ValueError, match="at least 2 labels"):
        IdentitySampler([0, 0, 1], [V, V, IR], num_ids=2, num_instances=1)
    with pytest.raises(ValueError, match="at least 2 labels"):
        IdentitySampler([3, 3], [V, V], num_ids=2, num_instances=1)
    with pytest.raises(ValueError, match="same length"):
        IdentitySampler([0, 1], [V], num_ids=2, num_instances=1)
    with pytest.raises(ValueError, match="num_instances"):
        IdentitySampler([0, 1], [V, V], num_ids=2, num_instances=0)
    with pytest.raises(ValueError, match="epoch"):
        IdentitySampler([0, 1], [V, V], num_ids=2, num_instances=1).set_epoch(-1)
