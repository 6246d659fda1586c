"""ReidImageDataset, collate and the loader factories on real files and real worker processes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from ppa.config import load_config
from ppa.data.errors import CorruptImageError
from ppa.data.keypoints import KeypointCache, MissingKeypointsError
from ppa.data.loader import (
    Batch,
    ReidImageDataset,
    collate,
    create_eval_loader,
    create_train_loader,
    resolve_pin_memory,
)
from ppa.data.noise_keys import NoiseKeys
from ppa.data.records import ImageRecord, Modality, TrainRecord
from ppa.data.transforms import ReidTransform
from ppa.pose.prior import canonical_keypoints

HEIGHT, WIDTH = 16, 8  # on-disk image size
V, IR = Modality.VISIBLE, Modality.INFRARED
KEY = bytes(range(32, 64))  # a fixed site key


def write_images(root, num_labels=4, per_modality=3):
    """PNG images whose red channel encodes their position in the record list."""
    records = []
    for label in range(num_labels):
        for modality, cam in ((V, 1), (IR, 3)):
            for i in range(per_modality):
                path = f"cam{cam}/{label:04d}/{i:04d}.png"
                value = len(records)
                image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
                image[..., 0] = value
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(root / path)
                records.append(TrainRecord(path, 100 + label, cam, modality, label))
    return records


def cache_for(records, tmp_path, skip=()):
    cache = KeypointCache(source="test")
    for n, record in enumerate(records):
        if n in skip:
            continue
        points = np.zeros((17, 3), dtype=np.float32)
        points[0] = (1.0 + n % 4, 2.0, 0.9)
        cache[record.path] = points
    cache.save(tmp_path / "keypoints.npz")
    return KeypointCache.load(tmp_path / "keypoints.npz")


@pytest.fixture()
def data(tmp_path):
    root = tmp_path / "root"
    records = write_images(root)
    return root, records


def test_items_by_index_and_by_seeded_pair(data, tmp_path):
    root, records = data
    cache = cache_for(records, tmp_path)
    dataset = ReidImageDataset(root, records, ReidTransform(32, 16), keypoints=cache)
    sample = dataset[5]
    assert sample.image.shape == (3, 32, 16)
    assert sample.image[0, 0, 0] == pytest.approx(5 / 255)
    assert (sample.label, sample.modality, sample.cam, sample.index) == (0, 1, 3, 5)
    assert sample.noise_key == b""  # no NoiseKeys: only deterministic anonymisers apply
    keyed = ReidImageDataset(root, records, ReidTransform(32, 16), noise_keys=NoiseKeys(KEY))
    assert keyed[5].noise_key == NoiseKeys(KEY).key_of(records[5].path)
    assert len(keyed[5].noise_key) == 32 and keyed[5].noise_key != keyed[4].noise_key
    # Nose (2, 2) of a 16x8 image -> (2.5 * 2 - 0.5, 2.5 * 2 - 0.5) at 32x16.
    assert sample.keypoints[0].tolist() == pytest.approx([4.5, 4.5, 0.9])
    paired = dataset[(5, 1234)]
    torch.testing.assert_close(paired.image, sample.image)


def test_random_transform_draws_from_the_pair_seed(data):
    root, records = data
    dataset = ReidImageDataset(root, records, ReidTransform(16, 8, pad=4, flip=0.5))
    a, b = dataset[(3, 77)], dataset[(3, 77)]
    torch.testing.assert_close(a.image, b.image)
    variants = {dataset[(3, seed)].image.sum().item() for seed in range(12)}
    assert len(variants) > 1  # different crops keep different amounts of the image


def test_keypoint_modes(data, tmp_path, caplog):
    root, records = data
    cache = cache_for(records, tmp_path, skip={2, 7})
    with pytest.raises(MissingKeypointsError) as info:
        ReidImageDataset(root, records, ReidTransform(16, 8), keypoints=cache)
    assert records[2].path in str(info.value) and "keypoints.npz" in str(info.value)

    with caplog.at_level(logging.WARNING, logger="ppa.data.loader"):
        skipped = ReidImageDataset(
            root, records, ReidTransform(16, 8), keypoints=cache, pose_missing="skip"
        )
    assert len(skipped) == len(records) - 2
    assert records[2] not in skipped.records and records[7] not in skipped.records
    assert "dropping 2 of 24" in caplog.text and records[7].path in caplog.text
    # Positions after a dropped record still report their index in the original list.
    assert skipped[2].index == 3

    prior = ReidImageDataset(
        root, records, ReidTransform(16, 8), keypoints=cache, pose_missing="center_prior"
    )
    np.testing.assert_allclose(prior[2].keypoints.numpy(), canonical_keypoints(16, 8))
    assert prior[0].keypoints[0].tolist() == pytest.approx([1.0, 2.0, 0.9])

    none = ReidImageDataset(root, records, ReidTransform(16, 8), keypoints=None)
    assert torch.count_nonzero(none[0].keypoints) == 0

    # An entry where the pose backend found no person (all scores 0) counts as missing for
    # the prior, but stays as it is otherwise.
    cache[records[4].path] = np.zeros((17, 3), np.float32)
    prior = ReidImageDataset(
        root, records, ReidTransform(16, 8), keypoints=cache, pose_missing="center_prior"
    )
    np.testing.assert_allclose(prior[4].keypoints.numpy(), canonical_keypoints(16, 8))
    plain = ReidImageDataset(
        root, records, ReidTransform(16, 8), keypoints=cache, pose_missing="skip"
    )
    assert plain.records[3] == records[4] and torch.count_nonzero(plain[3].keypoints) == 0


def test_labels_pids_and_record_types(data):
    root, records = data
    as_pid = ReidImageDataset(root, records, ReidTransform(16, 8), label_kind="pid")
    assert as_pid[7].label == 101
    plain = [ImageRecord(r.path, r.pid, r.cam, r.modality) for r in records]
    with pytest.raises(TypeError, match="label_kind='pid'"):
        ReidImageDataset(root, plain, ReidTransform(16, 8))
    assert ReidImageDataset(root, plain, ReidTransform(16, 8), label_kind="pid")[0].label == 100
    with pytest.raises(ValueError, match="pose_missing"):
        ReidImageDataset(root, records, ReidTransform(16, 8), pose_missing="ignore")


def test_bad_images_error_or_skip(data, caplog):
    root, records = data
    (root / records[4].path).write_bytes(b"")
    cut = (root / records[9].path).read_bytes()
    (root / records[9].path).write_bytes(cut[: len(cut) // 2])
    strict = ReidImageDataset(root, records, ReidTransform(16, 8))
    with pytest.raises(CorruptImageError) as info:
        strict[4]
    assert info.value.path == root / records[4].path

    with caplog.at_level(logging.WARNING, logger="ppa.data.loader"):
        lenient = ReidImageDataset(root, records, ReidTransform(16, 8), on_bad_image="skip")
    assert len(lenient) == len(records) - 2
    assert lenient.source_indices[4] == 5 and lenient.source_indices[8] == 10
    warnings = [r for r in caplog.records if "on_bad_image=skip" in r.getMessage()]
    assert len(warnings) == 2
    assert records[4].path in warnings[0].getMessage()
    assert records[9].path in warnings[1].getMessage()


def test_collate_and_batch_to(data):
    root, records = data
    dataset = ReidImageDataset(root, records, ReidTransform(16, 8))
    batch = collate([dataset[i] for i in (0, 3, 6)])
    assert isinstance(batch, Batch) and len(batch) == 3
    assert batch.images.shape == (3, 3, 16, 8) and batch.keypoints.shape == (3, 17, 3)
    assert batch.labels.tolist() == [0, 0, 1] and batch.modality.tolist() == [0, 1, 0]
    assert batch.cams.tolist() == [1, 3, 1] and batch.indices.tolist() == [0, 3, 6]
    for name in ("labels", "modality", "cams", "indices"):
        assert getattr(batch, name).dtype == torch.long
    assert batch.noise_keys.shape == (3, 0) and batch.noise_keys.dtype == torch.uint8
    keyed = ReidImageDataset(root, records, ReidTransform(16, 8), noise_keys=NoiseKeys(KEY))
    keys = collate([keyed[i] for i in (0, 3, 6)]).noise_keys
    assert keys.dtype == torch.uint8
    assert torch.equal(keys, NoiseKeys(KEY).tensor([records[i].path for i in (0, 3, 6)]))
    moved = batch.to("cpu", non_blocking=True)
    assert moved is not batch and torch.equal(moved.images, batch.images)
    with pytest.raises(ValueError, match="empty"):
        collate([])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_to_cuda_and_pinned(data):
    root, records = data
    batch = collate([ReidImageDataset(root, records, ReidTransform(16, 8))[0]])
    pinned = batch.pin_memory()
    assert pinned.images.is_pinned()
    on_gpu = pinned.to("cuda", non_blocking=True)
    assert on_gpu.images.device.type == "cuda" and on_gpu.indices.device.type == "cuda"


def _cfg(**train):
    # A 2 px pad keeps part of every 16x8 image in view (the configured 10 px may not).
    return load_config(
        [
            "input.height=16",
            "input.width=8",
            "train.num_ids=2",
            "train.num_instances=2",
            "train.augment.pad=2",
            # The tests read each record's index back from its red channel.
            "train.augment.grayscale=0.0",
            *(f"train.{k}={v}" for k, v in train.items()),
        ]
    )


def test_train_loader_batches_are_identical_with_and_without_workers(data, tmp_path):
    root, records = data
    cache = cache_for(records, tmp_path)

    def epoch(workers, number):
        cfg = _cfg(num_workers=workers)
        loader = create_train_loader(
            records,
            root,
            input_cfg=cfg.input,
            train_cfg=cfg.train,
            pose_cfg=cfg.pose,
            keypoints=cache,
            seed=3,
            noise_keys=NoiseKeys(KEY),
        )
        loader.batch_sampler.set_epoch(number)
        return list(loader)

    single, multi = epoch(0, 1), epoch(2, 1)
    assert len(single) == 24 // 8 == len(multi)
    for a, b in zip(single, multi, strict=True):
        assert a.images.shape == (8, 3, 16, 8)
        for name in ("images", "keypoints", "labels", "modality", "indices", "noise_keys"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        # P=2 labels x K=2 per modality, visible first.
        assert a.modality.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
        assert a.labels[:4].tolist() == a.labels[4:].tolist()
        # The red channel encodes the record index; padding is zero, so the max recovers it.
        assert (a.images[:, 0].amax(dim=(1, 2)) * 255).round().long().tolist() == a.indices.tolist()
    other_epoch = epoch(0, 2)
    assert any(
        not torch.equal(x.indices, y.indices) for x, y in zip(single, other_epoch, strict=True)
    )
    # One loader with persistent workers across epochs follows set_epoch like fresh loaders.
    cfg = _cfg(num_workers=2)
    loader = create_train_loader(
        records,
        root,
        input_cfg=cfg.input,
        train_cfg=cfg.train,
        pose_cfg=cfg.pose,
        keypoints=cache,
        seed=3,
    )
    for number, expected in ((1, single), (2, other_epoch)):
        loader.batch_sampler.set_epoch(number)
        for a, b in zip(loader, expected, strict=True):
            assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)


def test_train_loader_skips_bad_images_and_caps_batches(data):
    root, records = data
    (root / records[0].path).write_text("broken")
    cfg = _cfg(num_workers=0, max_batches_per_epoch=1)
    loader = create_train_loader(
        records,
        root,
        input_cfg=cfg.input,
        train_cfg=cfg.train,
        pose_cfg=cfg.pose,
        keypoints=None,
        seed=0,
        on_bad_image="skip",
    )
    batches = list(loader)
    assert len(batches) == 1
    assert 0 not in {i for b in batches for i in b.indices.tolist()}
    assert len(loader.dataset) == len(records) - 1


def test_eval_loader_keeps_record_order_and_pids(data):
    root, records = data
    cfg = load_config(["input.height=32", "input.width=16"])
    loader = create_eval_loader(
        records,
        root,
        input_cfg=cfg.input,
        batch_size=5,
        num_workers=0,
        pose_cfg=cfg.pose,
        keypoints=None,
    )
    batches = list(loader)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 4]
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(24))
    assert torch.cat([b.labels for b in batches]).tolist() == [r.pid for r in records]
    assert batches[0].images.shape == (5, 3, 32, 16)


def test_pin_memory_setting():
    assert resolve_pin_memory("auto") == torch.cuda.is_available()
    assert resolve_pin_memory(True) is True and resolve_pin_memory(False) is False
    with pytest.raises(ValueError, match="pin_memory"):
        resolve_pin_memory("sometimes")
