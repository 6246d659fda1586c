"""Per-modality BatchNorm statistics in the trunk (model.trunk_stats=modality)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ppa.config import load_config
from ppa.data.loader import Batch
from ppa.data.records import MODALITIES, Modality
from ppa.model import create_model
from ppa.model.modality_norm import (
    ModalityBatchNorm2d,
    modality_routing,
    seed_modality_statistics,
    split_batch_norms,
)
from ppa.model.norm_statistics import calibration_mode, measure_norm_statistics
from ppa.wire import STEM, parameter_group, site_keys

VIS, IR = Modality.VISIBLE.index, Modality.INFRARED.index


def test_each_modality_is_normalised_with_its_own_statistics():
    torch.manual_seed(0)
    norm = ModalityBatchNorm2d(3, MODALITIES)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    x = torch.randn(6, 3, 4, 2)
    modality_rows = torch.tensor([1, 3, 4])  # the infrared rows, on another scale
    x[modality_rows] = x[modality_rows] * 5 + 7
    modality = torch.tensor([VIS, IR, VIS, IR, IR, VIS])
    with modality_routing([norm], modality):
        out = norm(x)

    def by_hand(rows: torch.Tensor) -> torch.Tensor:
        part = x[rows]
        mean = part.mean(dim=(0, 2, 3), keepdim=True)
        var = part.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        normed = (part - mean) / torch.sqrt(var + 1e-5)
        return normed * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)

    vis_rows = torch.tensor([0, 2, 5])
    assert torch.allclose(out[vis_rows], by_hand(vis_rows), atol=1e-5)
    assert torch.allclose(out[modality_rows], by_hand(modality_rows), atol=1e-5)
    # Running statistics: each modality's moved toward its own rows only (momentum 0.1).
    ir_mean = x[modality_rows].mean(dim=(0, 2, 3))
    assert torch.allclose(norm.stats["infrared"].running_mean, 0.1 * ir_mean, atol=1e-5)
    vis_mean = x[vis_rows].mean(dim=(0, 2, 3))
    assert torch.allclose(norm.stats["visible"].running_mean, 0.1 * vis_mean, atol=1e-5)
    # Evaluation: the rows' own running statistics.
    norm.eval()
    with modality_routing([norm], modality):
        evaluated = norm(x)
    stats = norm.stats["infrared"]
    expected = (x[modality_rows] - stats.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        stats.running_var.view(1, -1, 1, 1) + 1e-5
    )
    expected = expected * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    assert torch.allclose(evaluated[modality_rows], expected, atol=1e-5)
    with pytest.raises(RuntimeError, match="modality"):
        norm(x)  # outside the encoder's routing


def test_split_keeps_the_affine_and_starts_both_modalities_from_the_statistics():
    block = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with torch.no_grad():
        block[1].weight.uniform_()
        block[1].running_mean.uniform_()
        block[1].running_var.uniform_(1, 2)
    reference = block[1]
    assert split_batch_norms(block, MODALITIES) == 1
    split = block[1]
    assert isinstance(split, ModalityBatchNorm2d)
    assert torch.equal(split.weight, reference.weight)
    for m in ("visible", "infrared"):
        assert torch.equal(split.stats[m].running_mean, reference.running_mean)
        assert torch.equal(split.stats[m].running_var, reference.running_var)


def test_the_encoder_routes_its_trunk_and_the_wire_groups_the_statistics_by_modality():
    shared = create_model(load_config(["model=tiny"]).model, 5)
    split = create_model(load_config(["model=tiny", "model.trunk_stats=modality"]).model, 5)
    keys = list(split.state_dict())
    stats = [k for k in keys if k.startswith("trunk.") and ".stats." in k]
    assert stats and all(parameter_group(k).kind == STEM for k in stats)
    assert parameter_group("trunk.layer1.0.bn1.weight").kind != STEM  # the affine is shared
    visible = site_keys(split.state_dict(), Modality.VISIBLE)
    assert "trunk.layer1.0.bn1.stats.visible.running_mean" in visible
    assert "trunk.layer1.0.bn1.stats.infrared.running_mean" not in visible
    # Same parameters (names and shapes) as the shared model: only statistics are split.
    assert {k: v.shape for k, v in shared.named_parameters()} == {
        k: v.shape for k, v in split.named_parameters()
    }
    split.eval()
    images = torch.randn(2, 3, 64, 32)
    out = split(images, torch.tensor([VIS, IR]))
    assert out.neck.shape == (2, split.num_features)
    trunk_map = split.forward_features(images, torch.tensor([VIS, VIS]))
    assert split.feature_size(64, 32) == tuple(trunk_map.shape[-2:])
    with pytest.raises(ValueError, match="trunk_stats"):
        create_model(load_config(["model=tiny", "model.trunk_stats=other"]).model, 5)


def test_training_mode_measurement_gives_batch_statistics_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = create_model(load_config(["model=tiny", "model.trunk_stats=modality"]).model, 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(4, 3, 64, 32)
    batch = Batch(
        images=images,
        labels=torch.zeros(4, dtype=torch.long),
        modality=torch.full((4,), IR, dtype=torch.long),
        cams=torch.zeros(4, dtype=torch.long),
        noise_keys=torch.zeros(4, 0, dtype=torch.uint8),
        keypoints=torch.zeros(4, 17, 3),
        indices=torch.arange(4),
    )
    captured = {}
    norm = model.trunk.layer2[0].bn1
    hook = norm.stats["infrared"].register_forward_hook(
        lambda _m, inputs, _o: captured.setdefault("x", inputs[0].detach().clone())
    )
    stats, seen = measure_norm_statistics(
        model, [batch], mean=(0.5,) * 3, std=(0.25,) * 3, mode="train"
    )
    hook.remove()
    assert seen == 4
    x = captured["x"].double()
    key = "trunk.layer2.0.bn1.stats.infrared"
    assert torch.allclose(
        torch.as_tensor(stats[key + ".running_mean"]).double(), x.mean(dim=(0, 2, 3)), atol=1e-5
    )
    assert not any(k.endswith("visible.running_mean") and "trunk" in k for k in stats)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(ValueError, match="mode"):
        measure_norm_statistics(model, [batch], mean=(0.5,) * 3, std=(0.25,) * 3, mode="x")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "eval"),
        (["model.trunk_stats=modality"], "train"),
        (["model.trunk_stats=modality", "federation.calibration_mode=eval"], "eval"),
        (["federation.calibration_mode=train"], "train"),
    ],
)
def test_auto_calibration_measures_the_way_test_time_normalises(overrides, expected):
    assert calibration_mode(load_config(["model=tiny", *overrides])) == expected


def test_a_per_modality_affine_scales_each_modality_by_its_own_weight_and_bias():
    """model.trunk_affine=modality: each modality's rows get their own statistics and their
    own weight and bias, by hand; a gradient reaches only the affine of the rows' modality."""
    torch.manual_seed(0)
    norm = ModalityBatchNorm2d(2, MODALITIES, affine="modality")
    assert norm.weight is None and norm.bias is None
    with torch.no_grad():
        norm.stats["visible"].weight.copy_(torch.tensor([2.0, 0.5]))
        norm.stats["visible"].bias.copy_(torch.tensor([1.0, 0.0]))
        norm.stats["infrared"].weight.copy_(torch.tensor([-1.0, 3.0]))
        norm.stats["infrared"].bias.copy_(torch.tensor([0.0, -2.0]))
    x = torch.randn(5, 2, 3, 2)
    modality = torch.tensor([VIS, IR, IR, VIS, IR])
    with modality_routing([norm], modality):
        out = norm(x)
    for m, idx in (("visible", VIS), ("infrared", IR)):
        rows = (modality == idx).nonzero(as_tuple=True)[0]
        part = x[rows]
        mean = part.mean(dim=(0, 2, 3), keepdim=True)
        var = part.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        stats = norm.stats[m]
        expected = (part - mean) / torch.sqrt(var + 1e-5) * stats.weight.view(
            1, -1, 1, 1
        ) + stats.bias.view(1, -1, 1, 1)
        assert torch.allclose(out[rows], expected, atol=1e-5)
    visible_only = torch.tensor([VIS] * 5)
    with modality_routing([norm], visible_only):
        norm(x).sum().backward()
    assert norm.stats["visible"].weight.grad is not None
    assert norm.stats["infrared"].weight.grad is None


def test_a_per_modality_affine_travels_within_its_modality():
    block = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with torch.no_grad():
        block[1].weight.uniform_()
        block[1].bias.uniform_()
    reference = block[1]
    split_batch_norms(block, MODALITIES, affine="modality")
    for m in ("visible", "infrared"):
        assert torch.equal(block[1].stats[m].weight, reference.weight)
        assert torch.equal(block[1].stats[m].bias, reference.bias)
    model = create_model(
        load_config(
            ["model=tiny", "model.trunk_stats=modality", "model.trunk_affine=modality"]
        ).model,
        5,
    )
    state = model.state_dict()
    assert "trunk.layer1.0.bn1.weight" not in state
    assert parameter_group("trunk.layer1.0.bn1.stats.infrared.weight") == parameter_group(
        "trunk.layer1.0.bn1.stats.infrared.running_mean"
    )
    visible = site_keys(state, Modality.VISIBLE)
    assert "trunk.layer1.0.bn1.stats.visible.bias" in visible
    assert "trunk.layer1.0.bn1.stats.infrared.bias" not in visible
    model.eval()
    out = model(torch.randn(2, 3, 64, 32), torch.tensor([VIS, IR]))
    assert out.neck.shape == (2, model.num_features)
    with pytest.raises(ValueError, match=r"trunk_affine=modality .* needs model.norm=batch"):
        create_model(load_config(["model=tiny", "model.trunk_affine=modality"]).model, 5)
    with pytest.raises(ValueError, match="must be one of"):
        ModalityBatchNorm2d(2, MODALITIES, affine="per_site")


def test_a_shared_affine_start_seeds_both_modalities_affine():
    """A start checkpoint with one affine per trunk norm (model.trunk_affine=shared) fits a
    model with an affine per modality: each modality starts from the shared weight and bias."""
    base = ["model=tiny", "model.trunk_stats=modality"]
    torch.manual_seed(0)
    shared = create_model(load_config(base).model, 5)
    split = create_model(load_config([*base, "model.trunk_affine=modality"]).model, 5)
    with torch.no_grad():
        shared.trunk.layer1[0].bn1.weight.uniform_()
    state = seed_modality_statistics(shared.state_dict(), split.state_dict())
    assert set(state) == set(split.state_dict())
    for m in ("visible", "infrared"):
        assert torch.equal(
            state[f"trunk.layer1.0.bn1.stats.{m}.weight"], shared.trunk.layer1[0].bn1.weight
        )
        assert torch.equal(
            state[f"trunk.layer1.0.bn1.stats.{m}.running_var"],
            shared.state_dict()[f"trunk.layer1.0.bn1.stats.{m}.running_var"],
        )
    split.load_state_dict(state)
