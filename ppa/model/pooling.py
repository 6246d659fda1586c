"""Generalised-mean pooling and keypoint-guided part pooling."""

from __future__ import annotations

import torch
from torch import nn


class GeM(nn.Module):
    """Generalised-mean pooling over H x W: (mean x^p)^(1/p); p=1 is average, p->inf is max."""

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6):
        super().__init__()
        p_tensor = torch.full((1,), float(p))
        if learnable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # p < 1 would turn the pooling into a soft-min that collapses features to zero.
        p = self.p.to(x.dtype).clamp(min=1.0)
        pooled = x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()):.3f}"


def keypoint_pool(
    feature_map: torch.Tensor, heatmaps: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Pool a feature map (B, C, h, w) with per-joint heatmaps (B, J, h, w) -> (B, J, C).

    Each part feature is the heatmap-weighted mean of the feature map; a joint with an empty
    heatmap (missing keypoint) gives a zero vector, which its zero confidence weight then
    removes from L_kpr.
    """
    if heatmaps.shape[-2:] != feature_map.shape[-2:]:
        raise ValueError(
            f"heatmaps {tuple(heatmaps.shape)} do not match the feature map "
            f"{tuple(feature_map.shape)}: build them at the feature-map size"
        )
    weights = heatmaps.to(feature_map.dtype)
    mass = weights.sum(dim=(-2, -1)).clamp(min=eps)  # (B, J)
    parts = torch.einsum("bjhw,bchw->bjc", weights, feature_map)
    return parts / mass.unsqueeze(-1)
