"""FedRS's restricted softmax: a site's identity logits of the classes it does not hold scaled
by ``federation.absent_class_logit_scale``, so its loss moves those classes' rows by that factor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ppa import losses
from ppa.training.restricted_softmax import absent_class_logit_scale


def test_the_factors_are_one_for_held_classes_and_alpha_for_the_rest() -> None:
    scale = absent_class_logit_scale([3, 1, 3, 4], 6, 0.25)
    assert scale.tolist() == [0.25, 1.0, 0.25, 1.0, 1.0, 0.25]


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_the_unit_interval_is_refused(alpha: float) -> None:
    with pytest.raises(ValueError, match="absent_class_logit_scale"):
        absent_class_logit_scale([0], 3, alpha)


@pytest.mark.parametrize(
    ("labels", "shown"), [([0, 1, 5], r"0\.\.5"), ([-1, 0, 2], r"-1\.\.2"), ([1, 2, 3], r"1\.\.3")]
)
def test_labels_outside_the_classifier_are_refused(labels: list[int], shown: str) -> None:
    with pytest.raises(ValueError, match=r"outside \[0, 3\): " + shown):
        absent_class_logit_scale(labels, 3, 0.5)


def _row_gradients(alpha: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity loss's gradient on a 5-class linear classifier's rows, and its value,
    for records of classes 0 and 2 only."""
    torch.manual_seed(0)
    features = torch.randn(4, 8)
    labels = torch.tensor([0, 2, 2, 0])
    weight = torch.randn(5, 8, requires_grad=True)
    logits = features @ weight.T
    if alpha is not None:
        logits = logits * absent_class_logit_scale(labels.tolist(), 5, alpha)
    loss = losses.identity_loss(logits, labels, label_smoothing=0.1)
    loss.backward()
    return weight.grad, loss.detach()


def test_at_zero_the_absent_rows_get_no_gradient() -> None:
    grad, _ = _row_gradients(0.0)
    assert torch.count_nonzero(grad[[1, 3, 4]]) == 0
    assert grad[[0, 2]].abs().sum() > 0


def test_the_absent_rows_gradient_scales_with_alpha_and_one_is_the_plain_softmax() -> None:
    plain, plain_loss = _row_gradients(None)
    one, one_loss = _row_gradients(1.0)
    torch.testing.assert_close(one, plain)
    torch.testing.assert_close(one_loss, plain_loss)
    # By hand: an absent class c's logit alpha * <w_c, x> has d loss / d w_c =
    # alpha * sum_i (softmax_ic - eps / C) x_i / n over the scaled logits.
    alpha = 0.5
    grad, _ = _row_gradients(alpha)
    torch.manual_seed(0)
    features, labels = torch.randn(4, 8), torch.tensor([0, 2, 2, 0])
    weight = torch.randn(5, 8)
    scale = torch.tensor([1.0, alpha, 1.0, alpha, alpha])
    p = F.softmax(features @ weight.T * scale, dim=1)
    target = torch.full((4, 5), 0.1 / 5)
    target[torch.arange(4), labels] += 0.9
    expected = scale[:, None] * ((p - target).T @ features) / 4
    torch.testing.assert_close(grad, expected)
