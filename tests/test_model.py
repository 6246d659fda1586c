"""The PPA encoder: modality stems, shared trunk, offsets, factory and weight loading."""

from __future__ import annotations

import pytest
import timm
import torch
from omegaconf import OmegaConf

from ppa.config import load_config
from ppa.model import EncoderOutput, create_model
from ppa.wire import OFFSET, SHARED, STEM, parameter_group


def model_cfg(name: str, **over):
    cfg = load_config([f"model={name}", "model.pretrained=false"]).model
    return OmegaConf.merge(cfg, over)


@pytest.mark.parametrize(("name", "dim"), [("tiny", 128), ("resnet18", 512), ("resnet50", 2048)])
def test_forward_shapes_and_stride(name: str, dim: int) -> None:
    torch.manual_seed(0)
    model = create_model(model_cfg(name), num_classes=7).eval()
    x = torch.rand(4, 3, 64, 32)
    mod = torch.tensor([0, 1, 0, 1])
    heat = torch.rand(4, 17, 4, 2)
    out = model(x, mod, anonymized=torch.tensor([False, True, False, True]), heatmaps=heat)
    assert isinstance(out, EncoderOutput)
    # Last stride 1: 64 x 32 input -> 4 x 2 map (stride 16).
    assert out.feature_map.shape == (4, dim, 4, 2)
    assert model.feature_size(64, 32) == (4, 2)
    assert out.pooled.shape == out.corrected.shape == out.neck.shape == (4, dim)
    assert out.logits.shape == (4, 7)
    assert out.parts.shape == (4, 17, dim)
    assert model.num_features == dim


def test_last_stride_two_halves_the_map() -> None:
    model = create_model(model_cfg("tiny", last_stride=2), num_classes=3)
    assert model.feature_size(64, 32) == (2, 1)


def test_each_modality_uses_its_own_stem() -> None:
    torch.manual_seed(0)
    model = create_model(model_cfg("tiny"), num_classes=3).eval()
    x = torch.rand(2, 3, 64, 32)
    mod = torch.tensor([0, 1])
    before = model(x, mod).pooled
    with torch.no_grad():
        model.stems["infrared"].conv1.weight.mul_(3.0)
    after = model(x, mod).pooled
    assert torch.allclose(before[0], after[0])  # the visible image is untouched
    assert not torch.allclose(before[1], after[1])
    # A batch of one modality gives the same features as the mixed batch.
    single = model(x[:1], mod[:1]).pooled
    assert torch.allclose(single[0], after[0], atol=1e-6)


def test_a_shared_stem_is_the_first_part_of_the_shared_trunk() -> None:
    """model.stems=shared: one stem for both modalities, inside the trunk, so the federation
    averages it over every site; with per-modality trunk statistics its BatchNorm keeps them
    per modality like the rest of the trunk."""
    from ppa.model.modality_norm import ModalityBatchNorm2d

    torch.manual_seed(0)
    model = create_model(model_cfg("tiny", stems="shared", trunk_stats="modality"), 3).eval()
    keys = list(model.state_dict())
    assert not [k for k in keys if k.startswith("stems.")]
    assert parameter_group("trunk.conv1.weight").kind == SHARED
    assert isinstance(model.trunk.bn1, ModalityBatchNorm2d)
    stats = [k for k in keys if k.startswith("trunk.bn1.") and "running_mean" in k]
    assert sorted(parameter_group(k).kind for k in stats) == [STEM, STEM]
    x = torch.rand(2, 3, 64, 32)
    mod = torch.tensor([0, 1])
    before = model(x, mod).pooled
    with torch.no_grad():
        model.trunk.conv1.weight.mul_(3.0)
    after = model(x, mod).pooled
    # The one stem serves both modalities.
    assert not torch.allclose(before[0], after[0]) and not torch.allclose(before[1], after[1])
    assert model.feature_size(64, 32) == (4, 2)
    with pytest.raises(ValueError, match=r"model\.stems"):
        create_model(model_cfg("tiny", stems="one"), 3)


def test_offsets_correct_only_anonymised_features() -> None:
    model = create_model(model_cfg("tiny"), num_classes=3).eval()
    with torch.no_grad():
        model.offsets.visible.fill_(0.5)
        model.offsets.infrared.fill_(-1.0)
    x = torch.rand(3, 3, 64, 32)
    mod = torch.tensor([0, 1, 1])
    anon = torch.tensor([True, True, False])
    out = model(x, mod, anonymized=anon)
    assert torch.allclose(out.corrected[0], out.pooled[0] - 0.5)
    assert torch.allclose(out.corrected[1], out.pooled[1] + 1.0)
    assert torch.equal(out.corrected[2], out.pooled[2])


def test_parameter_groups_for_the_federation() -> None:
    model = create_model(model_cfg("tiny"), num_classes=3)
    groups = {n: parameter_group(n) for n, _ in model.named_parameters()}
    assert groups["offsets.visible"].kind == OFFSET
    assert groups["stems.infrared.conv1.weight"].kind == STEM
    assert groups["stems.infrared.conv1.weight"].modality.value == "infrared"
    assert groups["classifier.weight"].kind == SHARED
    assert groups["trunk.layer4.0.conv1.weight"].kind == SHARED
    assert model.classifier.bias is None
    assert not model.neck.bias.requires_grad


def test_pretrained_path_loads_local_weights(tmp_path) -> None:
    torch.manual_seed(1)
    source = timm.create_model(
        "resnet18", pretrained=False, layers=[1, 1, 1, 1], channels=[16, 32, 64, 128], stem_width=16
    )
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = create_model(model_cfg("tiny", pretrained_path=str(path)), num_classes=3)
    assert torch.equal(model.stems["visible"].conv1.weight, source.conv1.weight)
    assert torch.equal(model.stems["infrared"].conv1.weight, source.conv1.weight)
    assert torch.equal(model.trunk.layer2[0].conv1.weight, source.layer2[0].conv1.weight)


def test_factory_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        create_model(model_cfg("tiny", pretrained_path=str(tmp_path / "missing.pth")), 3)
    with pytest.raises(ValueError, match="not a ResNet-family"):
        create_model(
            OmegaConf.create(
                {
                    "arch": "vit_tiny_patch16_224",
                    "arch_kwargs": {},
                    "pretrained": False,
                    "last_stride": 1,
                }
            ),
            3,
        )
    with pytest.raises(ValueError, match="num_classes"):
        create_model(model_cfg("tiny"), 0)


def test_fixed_classifier_is_unit_rows_and_never_trained() -> None:
    """model.classifier=fixed: unit-norm random rows, outside the optimiser, unchanged by a
    training step that moves everything else; the identity loss still trains the encoder."""
    from ppa.training.optim import create_optimizer

    torch.manual_seed(0)
    model = create_model(model_cfg("tiny", classifier="fixed"), num_classes=5).train()
    weight = model.classifier.weight
    assert not weight.requires_grad
    assert torch.allclose(weight.norm(dim=1), torch.ones(5))
    optimizer = create_optimizer(model, load_config([]).train.optimizer)
    assert all(p is not weight for g in optimizer.param_groups for p in g["params"])
    before = weight.clone()
    trunk = model.trunk[0][0].conv1.weight.clone()
    x = torch.rand(8, 3, 64, 32)
    modality = torch.tensor([0, 1] * 4)
    labels = torch.arange(8) % 5
    loss = torch.nn.functional.cross_entropy(model(x, modality).logits, labels)
    loss.backward()
    optimizer.step()
    assert torch.equal(weight, before)
    assert not torch.equal(model.trunk[0][0].conv1.weight, trunk)
    # The default stays a trained classifier, initialised small.
    learned = create_model(model_cfg("tiny"), num_classes=5).classifier.weight
    assert learned.requires_grad and learned.abs().max() < 0.01
    with pytest.raises(ValueError, match=r"model\.classifier"):
        create_model(model_cfg("tiny", classifier="frozen"), 5)


def test_cosine_classifier_scores_scaled_cosines_by_hand() -> None:
    """model.classifier=cosine: logits = scale x cos(neck, w_c), whatever the norms of the
    feature and the rows; the margin reaches the loss in logit units; a linear classifier has
    none."""
    model = create_model(
        model_cfg("tiny", classifier="cosine", cosine_scale=10.0, cosine_margin=0.25), 3
    )
    head = model.classifier
    with torch.no_grad():
        head.weight.zero_()
        head.weight[0, 0], head.weight[1, 1] = 3.0, 0.5
        head.weight[2, 0], head.weight[2, 1] = 1.0, 1.0
    x = torch.zeros(1, 128)
    x[0, 0] = 4.0  # along row 0, orthogonal to row 1, at 45 degrees to row 2
    torch.testing.assert_close(head(x), torch.tensor([[10.0, 0.0, 10.0 / 2**0.5]]))
    assert head.weight.requires_grad
    assert model.identity_margin == pytest.approx(2.5)
    assert create_model(model_cfg("tiny"), 3).identity_margin == 0.0
    with pytest.raises(ValueError, match=r"model\.cosine_scale"):
        create_model(model_cfg("tiny", classifier="cosine", cosine_scale=0.0), 3)
    with pytest.raises(ValueError, match=r"model\.cosine_margin"):
        create_model(model_cfg("tiny", classifier="cosine", cosine_margin=1.0), 3)


def test_projected_classifier_reads_a_fixed_public_projection() -> None:
    """model.classifier=projected: logits = W (P x) with P orthonormal, the same in every
    build (a fixed seed: every site and the server agree without sending it), not trained."""
    cfg = model_cfg("tiny", classifier="projected", classifier_rank=4)
    head = create_model(cfg, 3).classifier
    other = create_model(cfg, 3).classifier
    projection = head.projection
    assert projection.shape == (4, 128) and not projection.requires_grad
    torch.testing.assert_close(projection @ projection.T, torch.eye(4))
    assert torch.equal(projection, other.projection)
    assert head.weight.shape == (3, 4) and head.weight.requires_grad
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, -1.0]]))
    x = 3.0 * projection[1] + 5.0 * projection[3]  # coordinates (0, 3, 0, 5) in P's rows
    torch.testing.assert_close(head(x.unsqueeze(0)), torch.tensor([[0.0, 6.0, -5.0]]))
    assert "classifier.projection" in dict(create_model(cfg, 3).named_buffers())
    with pytest.raises(ValueError, match=r"model\.classifier_rank"):
        create_model(model_cfg("tiny", classifier="projected", classifier_rank=129), 3)


def test_modality_neck_keeps_statistics_per_modality() -> None:
    """Training on one modality moves only that modality's BNNeck statistics; at test time
    each sample is normalised with its own modality's statistics; the keys aggregate per
    modality."""
    torch.manual_seed(0)
    model = create_model(load_config(["model=tiny"]).model, 3)
    neck = model.neck
    x = torch.randn(8, model.num_features) * 3.0 + 5.0
    visible = torch.zeros(8, dtype=torch.long)
    neck.train()
    neck(x, visible)
    stats = {m: neck.stats[m] for m in ("visible", "infrared")}
    assert stats["visible"].num_batches_tracked.item() == 1
    assert stats["infrared"].num_batches_tracked.item() == 0
    assert torch.allclose(stats["infrared"].running_mean, torch.zeros(model.num_features))
    # A mixed batch: each half normalised by its own batch statistics.
    y = torch.cat([x, -x])
    both = neck(y, torch.tensor([0] * 8 + [1] * 8))
    alone = neck(-x, torch.ones(8, dtype=torch.long))
    torch.testing.assert_close(both[8:], alone)
    neck.eval()
    out = neck(x[:1], torch.ones(1, dtype=torch.long))
    ir = stats["infrared"]
    expected = (x[:1] - ir.running_mean) / torch.sqrt(ir.running_var + ir.eps) * neck.weight
    torch.testing.assert_close(out, expected)
    groups = {k: parameter_group(k) for k in model.state_dict() if k.startswith("neck.")}
    assert groups["neck.weight"].kind == SHARED
    stem = parameter_group("stems.infrared.conv1.weight")
    assert groups["neck.stats.infrared.running_var"] == stem


def test_shared_neck_statistics_on_request() -> None:
    cfg = load_config(["model=tiny", "model.neck_stats=shared"]).model
    model = create_model(cfg, 3)
    assert isinstance(model.neck, torch.nn.BatchNorm1d)
    with pytest.raises(ValueError, match="neck_stats"):
        create_model(load_config(["model=tiny", "model.neck_stats=other"]).model, 3)
