"""The learned anonymiser: bounded displacement, determinism, gradients and its objective."""

from __future__ import annotations

import pytest
import torch

from ppa.anonymize import GeneratorSettings, LearnedAnonymizer
from ppa.anonymize.measures import ssim
from ppa.pose.heatmaps import kpr_masks
from ppa.pose.prior import canonical_keypoints

SETTINGS = GeneratorSettings(width=8, depth=2, lr=1e-3, privacy_weight=1.0, structure_weight=1.0)
MASKS = {"min_confidence": 0.3, "head_scale": 0.55, "limb_width": 0.05, "smooth_sigma": 1.5}


def make(strength: float = 1.0, seed: int = 0) -> LearnedAnonymizer:
    torch.manual_seed(seed)
    return LearnedAnonymizer(strength, reference_height=288, settings=SETTINGS)


def person_batch(batch: int = 2, height: int = 48, width: int = 24):
    """Textured images and the masks of a canonical standing person."""
    gen = torch.Generator().manual_seed(1)
    coarse = torch.rand(batch, 3, height // 8, width // 8, generator=gen)
    layout = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    texture = 0.25 * torch.rand(batch, 3, height, width, generator=gen)
    images = (0.75 * layout + texture).clamp(0, 1)
    kp = torch.from_numpy(canonical_keypoints(height, width)).expand(batch, -1, -1)
    return images, kpr_masks(kp, height, width, **MASKS)


def test_output_is_bounded_by_level_and_deterministic():
    anonymizer = make(strength=0.2).requires_grad_(False)
    images, _ = person_batch()
    out = anonymizer(images, 0.5)
    assert out.shape == images.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((out - images).abs().max()) <= 0.2 * 0.5 + 1e-6
    assert float((out - images).abs().max()) > 0.0
    assert torch.equal(out, anonymizer(images, 0.5))  # same weights, same output
    # Independent of the rest of the batch (up to the convolution's float summation order).
    assert torch.allclose(out[1:], anonymizer(images[1:], 0.5), atol=1e-6)
    assert torch.equal(anonymizer(images, 0.0), images)  # level 0: untouched
    strong, weak = anonymizer.forward_levels(images, [1.5, 0.35])
    assert torch.equal(strong, anonymizer(images, 1.5))
    assert torch.equal(weak, anonymizer(images, 0.35))


@pytest.mark.parametrize("size", [(37, 19), (8, 8), (1, 5)])
def test_odd_sizes(size):
    anonymizer = make()
    images = torch.rand(1, 3, *size)
    assert anonymizer(images, 1.0).shape == images.shape


def test_gradients_reach_every_generator_parameter():
    anonymizer = make()
    images, masks = person_batch()
    anon = anonymizer(images, 1.5)
    losses = anonymizer.objective(images, anon, masks)
    losses["total"].backward()
    for name, param in anonymizer.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert float(param.grad.abs().sum()) > 0, name


def test_objective_terms_hand_checked():
    anonymizer = make()
    images, masks = person_batch()
    same = anonymizer.objective(images, images, masks)
    assert float(same["privacy"]) == pytest.approx(1.0, abs=1e-5)  # SSIM 1 -> 1
    assert float(same["structure"]) == 0.0
    # A constant shift of 0.1 survives the low-pass: the layout error is 0.01 everywhere.
    uniform = anonymizer.objective(images, images + 0.1, masks)
    assert float(uniform["structure"]) == pytest.approx(0.01, rel=1e-4)
    assert float(uniform["total"]) == pytest.approx(
        float(uniform["privacy"]) + float(uniform["structure"]), rel=1e-6
    )
    empty = type(masks)(head=torch.zeros_like(masks.head), skeleton=torch.zeros_like(masks.head))
    nothing = anonymizer.objective(images, images, empty)
    assert float(nothing["privacy"]) == 0.0 and float(nothing["structure"]) == 0.0


def test_training_steps_lower_the_objective_and_distort_the_head():
    anonymizer = make(seed=3)
    images, masks = person_batch(height=32, width=16)
    optimizer = torch.optim.Adam(anonymizer.parameters(), lr=2e-2)

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            anon = anonymizer(images, 1.5)
            total = float(anonymizer.objective(images, anon, masks)["total"])
            head_ssim = float(ssim(images, anon, masks.head).mean())
        return total, head_ssim

    total_before, head_ssim_before = evaluate()
    for _ in range(8):
        optimizer.zero_grad()
        anon = anonymizer(images, 1.5)
        anonymizer.objective(images, anon, masks)["total"].backward()
        optimizer.step()
    total_after, head_ssim_after = evaluate()
    assert total_after < 0.5 * total_before
    assert head_ssim_after < head_ssim_before - 0.3


def test_settings_are_validated():
    with pytest.raises(ValueError, match="width"):
        GeneratorSettings(width=0, depth=1, lr=1e-3, privacy_weight=1, structure_weight=1)
    with pytest.raises(KeyError, match=r"anonymizer\.generator\.lr"):
        GeneratorSettings.from_config(
            {"width": 4, "depth": 1, "privacy_weight": 1, "structure_weight": 1}
        )
