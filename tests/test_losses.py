"""Every PPA loss against hand-computed values, with shapes and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from ppa import losses


def test_identity_loss_with_label_smoothing_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0]], requires_grad=True)
    loss = losses.identity_loss(logits, torch.tensor([0]), label_smoothing=0.3)
    logp = torch.log_softmax(logits.detach(), dim=1)[0]
    # target distribution: 0.7 on the label + 0.1 spread over all three classes
    expected = -(0.8 * logp[0] + 0.1 * logp[1] + 0.1 * logp[2])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_identity_margin_is_taken_off_the_target_logit_by_hand() -> None:
    # CosFace: with margin m the target logit 2.0 counts as 2.0 - m; the others are untouched.
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.0, 1.5]])
    labels = torch.tensor([0, 2])
    rows = losses.identity_loss(logits, labels, label_smoothing=0.0, margin=0.5, reduction="none")
    expected = [
        -math.log(math.exp(1.5) / (math.exp(1.5) + math.exp(1.0) + 1.0)),
        -math.log(math.exp(1.0) / (math.exp(0.5) + 1.0 + math.exp(1.0))),
    ]
    assert rows.tolist() == pytest.approx(expected, rel=1e-6)
    mean = losses.identity_loss(logits, labels, label_smoothing=0.0, margin=0.5)
    assert mean.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    assert losses.identity_loss(logits, labels, label_smoothing=0.0).item() < mean.item()


def test_weighted_triplet_by_hand() -> None:
    # 1-D features: A=0, A=1 (same id), B=3, B=5.
    feats = torch.tensor([[0.0], [1.0], [3.0], [5.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    loss = losses.weighted_triplet_loss(feats, labels)

    # Each anchor has one positive; negatives weighted by softmax(-d).
    def neg(ds):
        w = [math.exp(-d) for d in ds]
        return sum(d * x for d, x in zip(ds, w, strict=True)) / sum(w)

    per_anchor = [
        1.0 - neg([3.0, 5.0]),
        1.0 - neg([2.0, 4.0]),
        2.0 - neg([3.0, 2.0]),
        2.0 - neg([5.0, 4.0]),
    ]
    expected = sum(math.log1p(math.exp(v)) for v in per_anchor) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


def test_triplet_without_positives_is_zero_not_nan() -> None:
    feats = torch.randn(3, 4, requires_grad=True)
    loss = losses.weighted_triplet_loss(feats, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()


def test_kpr_loss_weights_and_stop_gradient() -> None:
    anon = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]], requires_grad=True)  # (B=1, J=2, D=2)
    raw = torch.tensor([[[0.0, 0.0], [5.0, 5.0]]], requires_grad=True)
    conf = torch.tensor([[1.0, 0.0]])  # second joint missing
    loss = losses.kpr_loss(anon, raw, conf)
    assert loss.item() == pytest.approx(1.0)  # mean over channels of (1-0)^2, joint 1 only
    loss.backward()
    assert raw.grad is None or raw.grad.abs().sum() == 0  # stop-gradient on the raw side
    assert anon.grad[0, 0].abs().sum() > 0 and anon.grad[0, 1].abs().sum() == 0
    assert losses.kpr_loss(anon, raw, torch.zeros(1, 2)).item() == 0.0


def test_dc_loss_falls_when_the_offset_is_learnable() -> None:
    torch.manual_seed(0)
    raw = torch.randn(32, 8)
    true_shift = torch.linspace(-1, 1, 8)
    anon = raw + true_shift + 0.01 * torch.randn(32, 8)
    offset = torch.zeros(8, requires_grad=True)
    opt = torch.optim.SGD([offset], lr=0.5)
    first = None
    for _ in range(50):
        loss = losses.dc_loss(anon, raw, offset.expand(32, 8))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01 * first
    assert torch.allclose(offset.detach(), true_shift, atol=0.02)


def test_align_loss_by_hand() -> None:
    protos = torch.zeros(2, 2, 2)  # (modality, class, dim)
    protos[1, 0] = torch.tensor([1.0, 0.0])  # infrared prototype of id 0
    protos[0, 0] = torch.tensor([0.0, 1.0])  # visible prototype of id 0
    valid = torch.tensor([[True, False], [True, False]])
    feats = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    modality = torch.tensor([0, 0, 1])  # two visible samples of id 0, one IR of id 1
    loss = losses.align_loss(feats, labels, modality, protos, valid)
    # sample 0 matches the IR prototype (1 - 1 = 0); sample 1 is orthogonal (1 - 0 = 1);
    # sample 2 has no visible prototype for id 1 and is left out.
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert feats.grad[2].abs().sum() == 0
    none_valid = losses.align_loss(feats, labels, modality, protos, torch.zeros_like(valid))
    assert none_valid.item() == 0.0


def test_proto_loss_pulls_toward_the_own_modality_by_hand() -> None:
    """L_proto is L_align with the sample's own modality's prototype as the target."""
    protos = torch.zeros(2, 2, 2)  # (modality, class, dim)
    protos[0, 0] = torch.tensor([1.0, 0.0])  # visible prototype of id 0
    protos[1, 0] = torch.tensor([0.0, 1.0])  # infrared prototype of id 0
    protos[1, 1] = torch.tensor([1.0, 1.0])  # infrared prototype of id 1
    valid = torch.tensor([[True, False], [True, True]])
    feats = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0], [5.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    modality = torch.tensor([0, 0, 1, 0])
    rows, count = losses.align_rows(feats, labels, modality, protos, valid, same_modality=True)
    # visible id 0 on (1, 0): 0 and 1; infrared id 1 at 45 degrees of (1, 1): 1 - 1/sqrt 2;
    # visible id 1 has no visible prototype: left out (the infrared one is not used).
    assert count.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert rows.tolist() == pytest.approx([0.0, 1.0, 1.0 - 2**-0.5, 0.0])
    loss = losses.align_loss(feats, labels, modality, protos, valid, same_modality=True)
    assert loss.item() == pytest.approx((1.0 + 1.0 - 2**-0.5) / 3)
    loss.backward()
    assert feats.grad[3].abs().sum() == 0
    # The same samples under L_align: each toward the other modality's prototype.
    other, other_count = losses.align_rows(feats, labels, modality, protos, valid)
    assert other_count.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert other.tolist() == pytest.approx([1.0, 0.0, 0.0, 1.0 - 2**-0.5])


def test_contrastive_align_by_hand() -> None:
    """With a temperature the other modality's prototypes are a classifier: the term is the
    cross-entropy of cos / T over the valid prototypes (invalid ones take no part)."""
    protos = torch.zeros(2, 3, 2)
    protos[1, 0] = torch.tensor([1.0, 0.0])  # infrared prototypes of ids 0 and 1
    protos[1, 1] = torch.tensor([0.0, 1.0])
    protos[1, 2] = torch.tensor([-1.0, 0.0])  # id 2: marked invalid below
    valid = torch.tensor([[False, False, False], [True, True, False]])
    feats = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1])
    modality = torch.tensor([0, 0])  # two visible samples
    rows, count = losses.align_rows(feats, labels, modality, protos, valid, temperature=0.5)
    # sample 0: cos = (1, 0) -> logits (2, 0): -log(e^2 / (e^2 + 1))
    # sample 1: cos = (s, s), s = 1/sqrt(2) -> equal logits: log 2
    assert rows[0].item() == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-5)
    assert rows[1].item() == pytest.approx(math.log(2.0), rel=1e-5)
    assert count.tolist() == [1.0, 1.0]
    loss = losses.align_loss(feats, labels, modality, protos, valid, temperature=0.5)
    assert loss.item() == pytest.approx(rows.mean().item())
    # Without a temperature the same rows are cosine distances.
    plain, _ = losses.align_rows(feats, labels, modality, protos, valid)
    assert plain.tolist() == pytest.approx([0.0, 1.0 - 2**-0.5])


def test_align_rows_average_over_every_other_modality():
    # Three modalities: a sample of modality 0 is pulled toward the prototypes of 1 and 2.
    features = torch.tensor([[1.0, 0.0]])
    prototypes = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])  # (M=3, C=1, D=2)
    valid = torch.ones(3, 1, dtype=torch.bool)
    rows, count = losses.align_rows(
        features, torch.tensor([0]), torch.tensor([0]), prototypes, valid
    )
    assert count.tolist() == [2.0]
    assert rows.tolist() == pytest.approx([(1.0 + 0.0) / 2])  # (1 - cos 90°) and (1 - cos 0°)


def test_identity_loss_smooths_by_one_tenth_unless_told() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    labels = torch.tensor([0, 1])
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    assert losses.identity_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def _triplet_by_hand(points: list[float], labels: list[int]) -> float:
    """The weighted triplet of 1-D points, softplus(d_pos - d_neg) over anchors with both."""

    def weighted(ds: list[float], sign: float) -> float:
        top = max(sign * d for d in ds)  # shifted, so large distances do not overflow
        w = [math.exp(sign * d - top) for d in ds]
        return sum(d * x for d, x in zip(ds, w, strict=True)) / sum(w)

    values = []
    for i, (p, label) in enumerate(zip(points, labels, strict=True)):
        pos = [
            abs(p - q)
            for j, (q, m) in enumerate(zip(points, labels, strict=True))
            if m == label and j != i
        ]
        neg = [abs(p - q) for q, m in zip(points, labels, strict=True) if m != label]
        if pos and neg:
            values.append(weighted(pos, 1.0) - weighted(neg, -1.0))
    return sum(math.log1p(math.exp(v)) if v < 30 else v for v in values) / len(values)


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_weighted_triplet_at_small_and_large_distances(scale: float) -> None:
    # Distances far below 1 are not clamped up; distances of hundreds (exp would overflow
    # float32 without the max shift) give the same finite loss as by hand.
    points = [0.0, 1.0, 3.0, 5.0, 4.0]
    labels = [0, 0, 1, 1, 1]
    feats = torch.tensor([[p * scale] for p in points], requires_grad=True)
    loss = losses.weighted_triplet_loss(feats, torch.tensor(labels))
    expected = _triplet_by_hand([p * scale for p in points], labels)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    loss.backward()
    assert torch.isfinite(feats.grad).all()


def test_weighted_triplet_leaves_out_anchors_without_a_positive() -> None:
    # The anchor of identity 2 has negatives but no positive: it is not averaged in.
    points, labels = [0.0, 1.0, 3.0, 5.0, 10.0], [0, 0, 1, 1, 2]
    loss = losses.weighted_triplet_loss(torch.tensor([[p] for p in points]), torch.tensor(labels))
    assert loss.item() == pytest.approx(_triplet_by_hand(points, labels), rel=1e-5)
