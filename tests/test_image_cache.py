"""The decoded-image cache: the decoder's pixels, read once, within its byte budget, shared by a
site's rounds, and a training round that reads the same as without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import ppa.data.image_cache as image_cache_module
from client.site import SiteTrainer
from ppa.config import load_config
from ppa.data.image_cache import DecodedImageCache
from ppa.data.images import read_image
from ppa.node_config import SiteSpec
from ppa.wire import global_keys, pack
from tests.conftest import tiny_overrides


def _images(root: Path, count: int) -> list[Path]:
    paths = sorted((root / "cam1").rglob("*.jpg"))[:count]
    assert len(paths) == count
    return paths


@pytest.fixture
def decode_count(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many files the cache decoded (its own reads go through this counter)."""
    counter = {"reads": 0}

    def counting(path):
        counter["reads"] += 1
        return read_image(path)

    monkeypatch.setattr(image_cache_module, "read_image", counting)
    return counter


def test_a_cached_image_is_the_decoders_read_only_and_read_once(
    tiny_sysu_root: Path, decode_count: dict[str, int]
) -> None:
    path = _images(tiny_sysu_root, 1)[0]
    cache = DecodedImageCache(1 << 20)
    first = cache.read(path)
    np.testing.assert_array_equal(first, read_image(path))
    assert cache.read(str(path)) is first  # str or Path: one entry
    assert decode_count["reads"] == 1
    assert len(cache) == 1 and cache.bytes == first.nbytes == 64 * 32 * 3
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0, 0] = 1


def test_images_past_the_budget_are_decoded_at_every_read(
    tiny_sysu_root: Path, decode_count: dict[str, int]
) -> None:
    """A budget of one image and a half keeps the first image only; the second is decoded
    again at each read, with the same pixels."""
    one, two = _images(tiny_sysu_root, 2)
    cache = DecodedImageCache(64 * 32 * 3 * 3 // 2)
    cache.read(one)
    again = [cache.read(two) for _ in range(2)]
    assert decode_count["reads"] == 3
    assert len(cache) == 1 and cache.bytes == 64 * 32 * 3
    np.testing.assert_array_equal(again[0], again[1])
    cache.read(one)
    assert decode_count["reads"] == 3


@pytest.mark.parametrize(
    ("megabytes", "expected"), [(0, None), (None, None), (1, 1 << 20), (0.5, 1 << 19)]
)
def test_the_budget_comes_from_train_image_cache_mb(megabytes, expected) -> None:
    cache = DecodedImageCache.from_config(OmegaConf.create({"image_cache_mb": megabytes}))
    assert (cache.max_bytes if cache is not None else None) == expected


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match=r"train\.image_cache_mb"):
        DecodedImageCache.from_config(OmegaConf.create({"image_cache_mb": -1}))


def _start(trainer: SiteTrainer) -> dict[str, np.ndarray]:
    state = trainer.model.state_dict()
    return {k: v.copy() for k, v in pack(state, global_keys(state)).items()}


def _round(trainer: SiteTrainer, arrays: dict[str, np.ndarray], server_round: int):
    return trainer.train_round(
        arrays, None, server_round=server_round, local_epochs=1, half_precision=False
    )


def test_a_sites_rounds_decode_its_images_once_and_train_the_same(
    tiny_sysu_root: Path, tmp_path: Path, decode_count: dict[str, int]
) -> None:
    """The site's set-up keeps the cache across rounds: a round's new loader decodes no image
    read before. A round with the cache gives the arrays of a round without it, bit for bit."""
    extra = ("train.max_batches_per_epoch=2",)
    cached_cfg = load_config(
        tiny_overrides(tiny_sysu_root, tmp_path, *extra, "train.image_cache_mb=8")
    )
    plain_cfg = load_config(
        tiny_overrides(tiny_sysu_root, tmp_path, *extra, "train.image_cache_mb=0")
    )
    trainer = SiteTrainer(cached_cfg, SiteSpec(None, None, None, 0, 6))
    start = _start(trainer)
    cached = _round(trainer, start, 1)
    decoded = decode_count["reads"]
    assert 0 < decoded == len(trainer.setup.image_cache)
    plain = _round(SiteTrainer(plain_cfg, SiteSpec(None, None, None, 0, 6)), start, 1)
    assert decode_count["reads"] == decoded  # without a cache nothing goes through it
    for key, value in plain.arrays.items():
        np.testing.assert_array_equal(cached.arrays[key], value, err_msg=key)
    np.testing.assert_array_equal(cached.proto_sum, plain.proto_sum)
    # The same round again, from a new loader over the same cache: the same batches, and
    # not one file decoded.
    _round(trainer, start, 1)
    assert decode_count["reads"] == decoded
