"""The identity classifier's kinds (``model.classifier``) and their factory.

The cosine classifier: logits are a scaled cosine between feature and class vector. A linear
classifier over the BNNeck lets an identity win by feature norm as well as by
direction; retrieval compares directions only (cosine distance). A cosine classifier trains the
quantity retrieval uses, and with an additive margin on the target logit (CosFace,
``model.cosine_margin``) each record's own loss asks for angular separation between identities: the
part of a metric loss that needs no second record, which is what per-record DP-SGD can train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# learned: a linear classifier trained with the encoder; fixed: linear, fixed at its random
# initialisation (unit-norm rows; only the encoder learns to meet it); cosine: a learned
# cosine classifier; projected: learned over a fixed low-rank projection of the feature.
CLASSIFIERS = ("learned", "fixed", "cosine", "projected")


class CosineClassifier(nn.Module):
    """``logits = scale * cos(x, w_c)`` for every class vector w_c (rows of `weight`).

    `margin` (cosine units) is what the identity loss subtracts from the target class's
    cosine; `target_margin` is the same in logit units.
    """

    def __init__(self, dim: int, num_classes: int, scale: float, margin: float = 0.0):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"model.cosine_scale must be > 0, got {scale}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"model.cosine_margin must be in [0, 1), got {margin}")
        self.scale = float(scale)
        self.margin = float(margin)
        self.weight = nn.Parameter(torch.randn(num_classes, dim) / dim**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))

    @property
    def target_margin(self) -> float:
        return self.scale * self.margin

    def extra_repr(self) -> str:
        dim, classes = self.weight.shape[1], self.weight.shape[0]
        return f"dim={dim}, num_classes={classes}, scale={self.scale}, margin={self.margin}"


class ProjectedClassifier(nn.Module):
    """``logits = W (P x)``: a linear classifier over a fixed projection P of the feature.

    P (``rank`` x dim, orthonormal rows) is drawn once from a fixed seed, so it is public and
    the same at every site; only W (classes x rank) trains. Under DP-SGD the noise lands on
    every trained coordinate, so an identity's row, learned from a few dozen records, is
    ``dim / rank`` times less noisy per coordinate of signal; the gradient still reaches every
    channel of the feature through P.
    """

    def __init__(self, dim: int, num_classes: int, rank: int, seed: int = 0):
        super().__init__()
        if not 1 <= rank <= dim:
            raise ValueError(f"model.classifier_rank must be in [1, {dim}], got {rank}")
        generator = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(dim, rank, generator=generator))
        self.register_buffer("projection", basis.T.contiguous())
        self.weight = nn.Parameter(torch.empty(num_classes, rank).normal_(std=0.001))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.projection), self.weight)

    def extra_repr(self) -> str:
        rank, dim = self.projection.shape
        return f"dim={dim}, rank={rank}, num_classes={self.weight.shape[0]}"


def create_classifier(
    kind: str,
    dim: int,
    num_classes: int,
    *,
    cosine_scale: float = 16.0,
    cosine_margin: float = 0.0,
    rank: int = 16,
) -> nn.Module:
    """The identity classifier of `kind` (one of CLASSIFIERS) over `dim`-wide features."""
    if kind == "cosine":
        return CosineClassifier(dim, num_classes, cosine_scale, cosine_margin)
    if kind == "projected":
        return ProjectedClassifier(dim, num_classes, rank)
    if kind not in ("learned", "fixed"):
        raise ValueError(f"model.classifier must be one of {CLASSIFIERS}, got {kind!r}")
    linear = nn.Linear(dim, num_classes, bias=False)
    if kind == "fixed":
        # Fixed class anchors, the same for every site of a federation (the server's initial
        # arrays): a site that sees one camera or one modality of an identity pulls its
        # features toward the same direction as every other site, and no site can move the
        # anchors toward its own camera (FedBABU's frozen head). Unit rows: the BNNeck's
        # unit-variance features then give logits of order sqrt(dim).
        with torch.no_grad():
            weight = torch.randn_like(linear.weight)
            linear.weight.copy_(weight / weight.norm(dim=1, keepdim=True))
        linear.weight.requires_grad_(False)
    else:
        nn.init.normal_(linear.weight, std=0.001)
    return linear
