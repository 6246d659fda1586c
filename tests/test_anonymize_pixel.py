"""Fixed anonymisers (none, mosaic, blur, noise) and the factory, hand-checked on small tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ppa.anonymize import (
    ANONYMIZER_NAMES,
    BlurAnonymizer,
    IdentityAnonymizer,
    LearnedAnonymizer,
    MosaicAnonymizer,
    NoiseAnonymizer,
    create_anonymizer,
    mosaic,
)
from ppa.anonymize.prng import chacha20_blocks, key_words, keyed_standard_normal
from ppa.config import load_config
from ppa.data.noise_keys import NoiseKeys

TEST_KEYS = NoiseKeys(bytes(range(32)))


def noise_keys(*paths: str) -> torch.Tensor:
    """(B, 32) per-image keys of `paths` under a fixed test site key."""
    return TEST_KEYS.tensor(paths)


def random_images(*shape: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- none -------------------------------------------------------------------------------------
def test_none_is_identity():
    images = random_images(2, 3, 8, 4)
    assert torch.equal(IdentityAnonymizer(0.0, 288)(images, 1.5, noise_keys("a", "b")), images)


# -- mosaic -----------------------------------------------------------------------------------
def test_mosaic_hand_computed():
    image = torch.arange(8.0).view(1, 1, 2, 4)  # [[0 1 2 3], [4 5 6 7]]
    expected = torch.tensor([[2.5, 2.5, 4.5, 4.5], [2.5, 2.5, 4.5, 4.5]]).view(1, 1, 2, 4)
    assert torch.equal(mosaic(image, 2), expected)


def test_mosaic_blocks_not_dividing_the_image():
    image = torch.arange(35.0).view(1, 1, 5, 7)
    out = mosaic(image, 3)
    # Blocks: rows [0:3], [3:5] x cols [0:3], [3:6], [6:7]; each constant = its own mean.
    for rows in (slice(0, 3), slice(3, 5)):
        for cols in (slice(0, 3), slice(3, 6), slice(6, 7)):
            block = out[0, 0, rows, cols]
            assert torch.all(block == image[0, 0, rows, cols].mean())
    assert float(out[0, 0, 4, 6]) == pytest.approx((27 + 34) / 2)  # 1 x 2 corner block
    # A block larger than the image: one block, the image mean.
    assert torch.allclose(mosaic(image, 9), torch.full_like(image, 17.0))


def test_mosaic_block_scales_with_height_and_level():
    anonymizer = MosaicAnonymizer(24, reference_height=288)
    assert anonymizer.block_size(1.0, 288) == 24
    assert anonymizer.block_size(1.0, 96) == 8
    assert anonymizer.block_size(1.5, 96) == 12
    assert anonymizer.block_size(0.35, 128) == 4  # 3.73 -> 4
    assert anonymizer.block_size(0.01, 64) == 1  # at least one pixel
    images = random_images(2, 3, 96, 48)
    out = anonymizer(images, 1.0)
    blocks = out.view(2, 3, 12, 8, 6, 8)  # 12 x 6 blocks of 8 x 8
    assert torch.all(blocks == blocks[:, :, :, :1, :, :1])
    means = images.view(2, 3, 12, 8, 6, 8).mean(dim=(3, 5))
    assert torch.allclose(blocks[:, :, :, 0, :, 0], means, atol=1e-6)
    assert torch.equal(anonymizer(images, 0.01), images)


# -- blur -------------------------------------------------------------------------------------
def test_blur_of_constant_is_constant():
    images = torch.full((1, 3, 40, 20), 0.3)
    out = BlurAnonymizer(12, reference_height=40)(images, 1.5)  # sigma 18, longer than W
    assert torch.allclose(out, images, atol=1e-6)


def test_blur_matches_gaussian_with_sigma_scaled_by_height():
    anonymizer = BlurAnonymizer(2.0, reference_height=32)
    for height, sigma in ((32, 2.0), (64, 4.0)):
        images = random_images(1, 3, height, 24, dtype=torch.float64)
        out = anonymizer(images, 1.0)
        expected = ndimage.gaussian_filter(
            images.numpy(), (0, 0, sigma, sigma), mode="mirror", truncate=3.0
        )
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-10)


def test_blur_impulse_variance_is_sigma_squared():
    anonymizer = BlurAnonymizer(2.0, reference_height=64)
    for height, level, sigma in ((64, 1.0, 2.0), (128, 1.0, 4.0), (64, 1.5, 3.0)):
        impulse = torch.zeros(1, 1, height, height, dtype=torch.float64)
        impulse[..., height // 2, height // 2] = 1.0
        out = anonymizer(impulse, level)[0, 0]
        offsets = torch.arange(height, dtype=torch.float64) - height // 2
        assert float(out.sum()) == pytest.approx(1.0)
        variance_x = float((out.sum(dim=0) * offsets**2).sum())
        # A 3-sigma truncated sampled Gaussian keeps ~97% of the variance.
        assert variance_x == pytest.approx(sigma**2, rel=0.04)


def test_blur_and_mosaic_are_differentiable():
    images = random_images(1, 3, 16, 8).requires_grad_()
    loss = BlurAnonymizer(3, 16)(images).sum() + MosaicAnonymizer(3, 16)(images).square().sum()
    loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert float(images.grad.abs().sum()) > 0


# -- noise ------------------------------------------------------------------------------------
def test_noise_std_matches_sigma():
    images = torch.full((2, 3, 64, 64), 0.5)
    out = NoiseAnonymizer(0.1, reference_height=288)(images, 1.0, noise_keys("a", "b"))
    noise = (out - images).flatten()
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.003)
    assert float(noise.std()) == pytest.approx(0.1, rel=0.03)
    within_one_sigma = float((noise.abs() < 0.1).double().mean())
    assert within_one_sigma == pytest.approx(0.6827, abs=0.015)
    # Level scales sigma, clipping keeps [0, 1].
    strong = NoiseAnonymizer(0.5, 288)(images, 1.5, noise_keys("a", "b"))
    assert float(strong.min()) == 0.0 and float(strong.max()) == 1.0


def test_noise_is_deterministic_per_key_and_independent_of_the_batch():
    anonymizer = NoiseAnonymizer(0.2, reference_height=288)
    images = random_images(3, 3, 16, 8)
    keys = noise_keys("x.jpg", "y.jpg", "x.jpg")
    out = anonymizer(images, 1.0, keys)
    assert torch.equal(out, anonymizer(images, 1.0, keys))
    alone = anonymizer(images[1:2], 1.0, keys[1:2])
    assert torch.equal(out[1:2], alone)
    noise0, noise2 = out[0] - images[0], out[2] - images[2]
    unclipped = (out[0] > 0) & (out[0] < 1) & (out[2] > 0) & (out[2] < 1)
    assert torch.allclose(noise0[unclipped], noise2[unclipped], atol=1e-6)  # same key
    other = anonymizer(images, 1.0, noise_keys("z.jpg", "y.jpg", "x.jpg"))
    assert not torch.equal(other[0], out[0])  # other key


def test_noise_levels_share_one_draw():
    anonymizer = NoiseAnonymizer(0.05, reference_height=288)
    images = torch.full((1, 3, 8, 8), 0.5)
    keys = noise_keys("p.jpg")
    weak, strong = anonymizer.forward_levels(images, [1.0, 2.0], keys)
    assert torch.allclose(strong - images, 2.0 * (weak - images), atol=1e-6)
    assert torch.equal(weak, anonymizer(images, 1.0, keys))


def test_noise_needs_keys():
    images = random_images(2, 3, 8, 4)
    with pytest.raises(ValueError, match="noise keys"):
        NoiseAnonymizer(0.5, 288)(images, 1.0)
    # A batch loaded without its owner's NoiseKeys: fine for mosaic, refused by noise.
    unkeyed = torch.zeros(2, 0, dtype=torch.uint8)
    assert torch.equal(IdentityAnonymizer(0.5, 288)(images, 1.0, unkeyed), images)
    with pytest.raises(ValueError, match=r"noise keys .*shape \(2, 0\)"):
        NoiseAnonymizer(0.5, 288)(images, 1.0, unkeyed)


def test_keyed_normals_are_standard_and_uncorrelated_across_keys():
    z = keyed_standard_normal(noise_keys("a", "b", "c", "d"), (50_000,))
    assert z.shape == (4, 50_000)
    assert torch.allclose(z.mean(dim=1), torch.zeros(4), atol=0.02)
    assert torch.allclose(z.std(dim=1), torch.ones(4), atol=0.02)
    corr = torch.corrcoef(z)
    assert float((corr - torch.eye(4)).abs().max()) < 0.03
    # The tails too: the share within one and two sigma is the normal's.
    within = [float((z.abs() < k).double().mean()) for k in (1.0, 2.0)]
    assert within == pytest.approx([0.6827, 0.9545], abs=0.005)
    # Odd sizes use the cos half and part of the sin half of the Box-Muller pairs.
    assert keyed_standard_normal(noise_keys("a"), (3, 3, 1)).shape == (1, 3, 3, 1)


def test_chacha20_matches_the_rfc_8439_test_vector():
    # RFC 8439 section 2.3.2: key 00 01 .. 1f, nonce 00:00:00:09:00:00:00:4a:00:00:00:00,
    # block counter 1; the state after the block function, as 16 words.
    key = torch.arange(32, dtype=torch.uint8).view(1, 32)
    words = chacha20_blocks(key_words(key), torch.tensor([1]), (0x09000000, 0x4A000000, 0))
    expected = [
        0xE4E7F110, 0x15593BD1, 0x1FDD0F50, 0xC47120A3,
        0xC7F4D1C7, 0x0368C033, 0x9AAA2204, 0x4E6CD4C3,
        0x466482D2, 0x09AA9F07, 0x05D7C214, 0xA2028BD9,
        0xD19C12B5, 0xB94E16DE, 0xE883D0CB, 0x4E3C50A2,
    ]  # fmt: skip
    assert words.reshape(-1).tolist() == expected


def test_chacha20_keystream_matches_the_cryptography_package():
    ciphers = pytest.importorskip("cryptography.hazmat.primitives.ciphers")
    key = bytes(range(100, 132))
    counter_and_nonce = (0).to_bytes(16, "little")
    cipher = ciphers.Cipher(ciphers.algorithms.ChaCha20(key, counter_and_nonce), mode=None)
    stream = cipher.encryptor().update(bytes(64 * 5))
    expected = [int.from_bytes(stream[i : i + 4], "little") for i in range(0, len(stream), 4)]
    keys = torch.tensor(list(key), dtype=torch.uint8).view(1, 32)
    assert chacha20_blocks(key_words(keys), torch.arange(5)).reshape(-1).tolist() == expected


# -- validation and factory --------------------------------------------------------------------
def test_bad_inputs_are_rejected():
    anonymizer = MosaicAnonymizer(4, 16)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        anonymizer(torch.rand(3, 16, 8))
    with pytest.raises(TypeError, match="floating"):
        anonymizer(torch.zeros(1, 3, 16, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="level"):
        anonymizer(torch.rand(1, 3, 16, 8), -1.0)
    with pytest.raises(ValueError, match=r"noise keys must have shape \(2, 32\)"):
        anonymizer(torch.rand(2, 3, 16, 8), 1.0, torch.zeros(3, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        anonymizer(torch.rand(2, 3, 16, 8), 1.0, torch.zeros(2, 32, dtype=torch.long))
    with pytest.raises(ValueError, match=r"anonymizer\.strength"):
        MosaicAnonymizer(-1, 16)


@pytest.mark.parametrize("name", ANONYMIZER_NAMES)
def test_create_anonymizer_from_the_config_tree(name):
    cfg = load_config([f"anonymizer={name}"]).anonymizer
    anonymizer = create_anonymizer(cfg)
    assert anonymizer.name == name
    assert anonymizer.strength == float(cfg.strength)
    assert anonymizer.reference_height == 288
    if name == "learned":
        assert isinstance(anonymizer, LearnedAnonymizer)
        assert anonymizer.settings.width == cfg.generator.width
    with torch.no_grad():
        out = anonymizer(random_images(2, 3, 32, 16), 1.0, noise_keys("a", "b"))
    assert out.shape == (2, 3, 32, 16)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_create_anonymizer_errors_name_the_key():
    with pytest.raises(ValueError, match=r"anonymizer\.name 'pixelate'"):
        create_anonymizer({"name": "pixelate", "strength": 1, "reference_height": 288})
    with pytest.raises(KeyError, match=r"anonymizer\.reference_height"):
        create_anonymizer({"name": "blur", "strength": 1})
    with pytest.raises(KeyError, match=r"anonymizer\.generator"):
        create_anonymizer({"name": "learned", "strength": 1, "reference_height": 288})
