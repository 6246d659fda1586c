"""KPR composition: head strong, skeleton weak, the rest medium; masks built once per batch."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ppa.anonymize import (
    AnonymizationLevels,
    KprAnonymizer,
    MosaicAnonymizer,
    NoiseAnonymizer,
)
from ppa.config import load_config
from ppa.data.noise_keys import NoiseKeys
from ppa.pose.coco import NUM_KEYPOINTS
from ppa.pose.heatmaps import MaskSettings
from ppa.pose.prior import canonical_keypoints

LEVELS = AnonymizationLevels(strong=1.5, medium=1.0, weak=0.35)
POSE = MaskSettings(min_confidence=0.3, head_scale=0.55, limb_width=0.05, smooth_sigma=1.5)


class CountingMosaic(MosaicAnonymizer):
    """A real mosaic that records the levels it was asked for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[float] = []

    def anonymize(self, images: Tensor, level: float, keys: Tensor | None) -> Tensor:
        self.calls.append(level)
        return super().anonymize(images, level, keys)


TEST_KEYS = NoiseKeys(bytes(32))


def batch(n: int = 3, height: int = 64, width: int = 32):
    """Images, keypoints and noise keys of `n` images."""
    images = torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(0))
    kp = torch.from_numpy(canonical_keypoints(height, width)).repeat(n, 1, 1)
    return images, kp, TEST_KEYS.tensor([f"img{i}.jpg" for i in range(n)])


def test_composition_follows_the_masks():
    anonymizer = NoiseAnonymizer(0.3, reference_height=64)
    kpr = KprAnonymizer(anonymizer, LEVELS, POSE, pose_guided=True)
    images, kp, keys = batch()
    result = kpr(images, kp, keys)
    head, skeleton = result.masks.head, result.masks.skeleton
    strong = anonymizer(images, LEVELS.strong, keys)
    medium = anonymizer(images, LEVELS.medium, keys)
    weak = anonymizer(images, LEVELS.weak, keys)
    full_head = (head == 1.0).expand_as(images)
    background = ((head == 0) & (skeleton == 0)).expand_as(images)
    assert int(full_head.sum()) > 0 and int(background.sum()) > 0
    assert torch.allclose(result.images[full_head], strong[full_head], atol=1e-6)
    assert torch.allclose(result.images[background], medium[background], atol=1e-6)
    expected = head * strong + skeleton * weak + (1 - head - skeleton) * medium
    assert torch.allclose(result.images, expected, atol=1e-6)
    # Strong skeleton pixels are mostly the weak anonymisation: closer to the raw image.
    on_limb = (skeleton > 0.99).expand_as(images)
    assert float((result.images - images)[on_limb].abs().mean()) < float(
        (medium - images)[on_limb].abs().mean()
    )


def test_not_pose_guided_is_medium_everywhere_but_returns_masks():
    anonymizer = MosaicAnonymizer(8, reference_height=64)
    kpr = KprAnonymizer(anonymizer, LEVELS, POSE, pose_guided=False)
    images, kp, keys = batch()
    result = kpr(images, kp, keys)
    assert torch.equal(result.images, anonymizer(images, LEVELS.medium))
    assert float(result.masks.head.max()) == 1.0


def test_missing_keypoints_anonymise_everything_at_medium():
    anonymizer = MosaicAnonymizer(8, reference_height=64)
    kpr = KprAnonymizer(anonymizer, LEVELS, POSE, pose_guided=True)
    images, kp, keys = batch(2)
    kp[1] = 0.0  # second image: no joints at all
    kp[0, :, 2] = 0.1  # first: all below min_confidence
    result = kpr(images, kp, keys)
    assert torch.allclose(result.images, anonymizer(images, LEVELS.medium), atol=1e-6)


def test_each_level_once_per_batch():
    anonymizer = CountingMosaic(8, reference_height=64)
    kpr = KprAnonymizer(anonymizer, LEVELS, POSE, pose_guided=True)
    images, kp, keys = batch(5)
    kpr(images, kp, keys)
    assert sorted(anonymizer.calls) == [0.35, 1.0, 1.5]
    anonymizer.calls.clear()
    KprAnonymizer(anonymizer, AnonymizationLevels(1.0, 1.0, 1.0), POSE)(images, kp, keys)
    assert anonymizer.calls == [1.0]


def test_none_config_returns_the_raw_images_exactly():
    kpr = KprAnonymizer.from_config(load_config(["anonymizer=none", "ppa=full"]))
    images, kp, keys = batch(2)
    assert torch.equal(kpr(images, kp, keys).images, images)


def test_deterministic_per_image_and_key():
    kpr = KprAnonymizer(NoiseAnonymizer(0.5, 64), LEVELS, POSE)
    images, kp, keys = batch(3)
    first = kpr(images, kp, keys).images
    assert torch.equal(first, kpr(images, kp, keys).images)
    alone = kpr(images[2:], kp[2:], keys[2:]).images
    assert torch.allclose(first[2:], alone, atol=1e-6)
    assert not torch.equal(first, kpr(images, kp, keys.roll(1, 0)).images)


@pytest.mark.parametrize("name", ["mosaic", "blur", "noise", "learned", "none"])
def test_from_config(name):
    cfg = load_config([f"anonymizer={name}", "ppa=kpr"])
    kpr = KprAnonymizer.from_config(cfg)
    assert kpr.anonymizer.name == name
    assert kpr.pose_guided is True
    assert kpr.levels == AnonymizationLevels(**cfg.anonymizer.levels)
    assert kpr.mask_settings == MaskSettings.from_config(cfg.pose)
    images, kp, keys = batch(2, 32, 16)
    with torch.no_grad():
        result = kpr(images, kp, keys)
    assert result.images.shape == images.shape
    assert float(result.images.min()) >= 0.0 and float(result.images.max()) <= 1.0
    assert KprAnonymizer.from_config(load_config(["ppa=anon_only"])).pose_guided is False


def test_learned_generator_is_a_submodule_with_gradients():
    kpr = KprAnonymizer.from_config(load_config(["anonymizer=learned"]))
    images, kp, keys = batch(2, 32, 16)
    result = kpr(images, kp, keys)
    terms = kpr.anonymizer.objective(images, result.images, result.masks)
    terms["total"].backward()
    grads = [p.grad for p in kpr.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bad_inputs_are_rejected():
    kpr = KprAnonymizer(MosaicAnonymizer(8, 64), LEVELS, POSE)
    images, kp, keys = batch(2)
    with pytest.raises(ValueError, match="3 keypoint sets for 2 images"):
        kpr(images, torch.zeros(3, NUM_KEYPOINTS, 3), keys)
    with pytest.raises(ValueError, match=r"\(B, 17, 3\)"):
        kpr(images, kp[..., :2], keys)
    with pytest.raises(ValueError, match=r"anonymizer\.levels\.weak"):
        AnonymizationLevels(1.5, 1.0, -0.1)
    with pytest.raises(KeyError, match=r"anonymizer\.levels\.strong"):
        AnonymizationLevels.from_config({"medium": 1.0, "weak": 0.3})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["mosaic", "blur", "noise", "learned"])
def test_cuda_matches_cpu(name):
    torch.manual_seed(0)
    kpr = KprAnonymizer.from_config(load_config([f"anonymizer={name}"]))
    images, kp, keys = batch(2, 64, 32)
    with torch.no_grad():
        cpu = kpr(images, kp, keys)
        gpu = kpr.to("cuda")(images.cuda(), kp.cuda(), keys.cuda())
    assert gpu.images.device.type == "cuda" and gpu.masks.head.device.type == "cuda"
    torch.testing.assert_close(gpu.masks.head.cpu(), cpu.masks.head, atol=1e-5, rtol=0)
    torch.testing.assert_close(gpu.masks.skeleton.cpu(), cpu.masks.skeleton, atol=1e-5, rtol=0)
    # Same noise from the same keys on both devices; TF32 convolutions bound the learned case.
    torch.testing.assert_close(gpu.images.cpu(), cpu.images, atol=2e-3, rtol=0)
