"""opacus per-sample-gradient rules for PPA's own layers, and the model rewrite the hooks need.

Registering a rule is a side effect of importing this module (`ppa.dp.sgd` does). Every rule
gives each row's gradient of a module's own parameters: the DCMA offsets, the cosine and
projected classifiers, and the affine of a norm over frozen statistics (the BNNeck, the trunk's
per-modality norms, frozen BatchNorm2d), which touches one record at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from ppa.model import ModalityOffsets
from ppa.model.classifier import CosineClassifier, ProjectedClassifier
from ppa.model.finetune import FrozenBatchNorm2d, is_frozen_norm
from ppa.model.modality_norm import ModalityBatchNorm2d
from ppa.model.neck import ModalityBatchNorm1d
from ppa.model.routing import route_by_modality


@register_grad_sampler(ModalityOffsets)
def _offsets_grad_sample(
    layer: ModalityOffsets, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of the DCMA offsets: a row's gradient goes to its modality's
    offset. (opacus's functorch fallback would try to autocast to the index dtype.)"""
    modality = activations[0]
    grads = {}
    for m in layer.modalities:
        param = getattr(layer, m.value)
        if param.requires_grad:
            mask = (modality == m.index).to(backprops.dtype).unsqueeze(-1)
            grads[param] = backprops * mask
    return grads


@register_grad_sampler(ModalityBatchNorm1d)
def _modality_norm_grad_sample(
    layer: ModalityBatchNorm1d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of the BNNeck affine over frozen statistics:
    y = normed(x) * w + b, so dL/dw per sample = backprop * normed(x), dL/db = backprop."""
    _require_frozen_statistics(layer, "BNNeck")
    x, modality = activations[0], activations[1]
    with torch.no_grad():
        normed = route_by_modality(x, modality, layer.stats, layer.modalities)
    return _affine_grads(layer.weight, layer.bias, normed, backprops)


@register_grad_sampler(FrozenBatchNorm2d)
def _frozen_norm_grad_sample(
    layer: FrozenBatchNorm2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of a BatchNorm2d affine over frozen statistics
    (``privacy.finetune.norm_affine``): dL/dw = sum over positions of backprop * normed(x),
    dL/db = sum of backprop."""
    x = activations[0]
    with torch.no_grad():
        normed = F.batch_norm(
            x, layer.running_mean, layer.running_var, training=False, eps=layer.eps
        )
    return _affine_grads(layer.weight, layer.bias, normed, backprops)


@register_grad_sampler(ModalityBatchNorm2d)
def _modality_norm2d_grad_sample(
    layer: ModalityBatchNorm2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """As `_frozen_norm_grad_sample` for the trunk's per-modality norms: each row normalised
    with its own modality's frozen statistics, one shared affine."""
    _require_frozen_statistics(layer, "trunk")
    x = activations[0]
    with torch.no_grad():
        normed = route_by_modality(x, layer.last_modality, layer.stats, layer.modalities)
    return _affine_grads(layer.weight, layer.bias, normed, backprops)


@register_grad_sampler(CosineClassifier)
def _cosine_classifier_grad_sample(
    layer: CosineClassifier, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of a cosine classifier, logits = s * x_hat . w_hat_c: through the
    row normalisation, dL/dw_c = s * g_c * (x_hat - cos_c * w_hat_c) / |w_c| for a row's
    logit gradients g."""
    if not layer.weight.requires_grad:
        return {}
    with torch.no_grad():
        x_hat = F.normalize(activations[0].float(), dim=-1)
        norms = layer.weight.norm(dim=-1, keepdim=True)
        w_hat = layer.weight / norms
        cos = x_hat @ w_hat.T
        radial = x_hat.unsqueeze(1) - cos.unsqueeze(-1) * w_hat.unsqueeze(0)
        grads = layer.scale * backprops.float().unsqueeze(-1) * radial / norms.unsqueeze(0)
    return {layer.weight: grads.to(layer.weight.dtype)}


@register_grad_sampler(ProjectedClassifier)
def _projected_classifier_grad_sample(
    layer: ProjectedClassifier, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of logits = W (P x): dL/dW = g (P x)^T for a row's logit
    gradients g (P is a buffer: nothing to clip)."""
    if not layer.weight.requires_grad:
        return {}
    with torch.no_grad():
        projected = F.linear(activations[0], layer.projection)
        grads = torch.einsum("nc,nk->nck", backprops, projected)
    return {layer.weight: grads}


def _require_frozen_statistics(layer: nn.Module, where: str) -> None:
    if not all(is_frozen_norm(stats) for stats in layer.stats.values()):
        raise RuntimeError(
            f"live {where} statistics couple the records of a batch: freeze them "
            "(ppa.model.finetune.freeze_batch_norm) before DP-SGD"
        )


def _affine_grads(
    weight: nn.Parameter, bias: nn.Parameter, normed: torch.Tensor, backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of y = normed * w + b (per channel, dim 1), summed over the
    positions of a feature map (none for a vector)."""
    positions = tuple(range(2, normed.dim()))
    grads = {}
    if weight.requires_grad:
        grads[weight] = (backprops * normed).sum(dim=positions) if positions else backprops * normed
    if bias.requires_grad:
        grads[bias] = backprops.sum(dim=positions) if positions else backprops
    return grads


class _Clone(nn.Module):
    """A copy of its input (no parameters, no state-dict entries)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def out_of_place_after_trained_norms(model: nn.Module) -> None:
    """opacus's full backward hooks forbid in-place changes of a hooked module's output. A
    trained norm affine (``privacy.finetune.norm_affine``) is hooked, and the trunk modifies
    norm outputs in place twice: in-place activations, and a residual block's ``x +=
    shortcut`` on its last norm. Activations are switched to out-of-place ones and a copy is
    taken at the block's drop-path slot, just before the addition: the same values."""
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
        if isinstance(module, (BasicBlock, Bottleneck)):
            last = module.bn3 if isinstance(module, Bottleneck) else module.bn2
            if any(p.requires_grad for p in last.parameters(recurse=False)):
                drop = module.drop_path
                if drop is None:
                    module.drop_path = _Clone()
                elif not isinstance(drop, nn.Sequential) or not isinstance(drop[-1], _Clone):
                    module.drop_path = nn.Sequential(drop, _Clone())
