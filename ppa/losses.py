"""PPA losses: identity, weighted-regularised triplet, KPR, DCMA consistency, alignment."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def identity_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.1,
    margin: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Label-smoothed cross-entropy over the identity classifier shared by all sites.

    `margin` is subtracted from each row's target logit first (CosFace's additive margin for a
    cosine classifier): a record only scores as well as before if its target wins by that much.
    """
    logits = logits.float()
    if margin:
        logits = logits - margin * F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction=reduction)


def _euclidean(x: torch.Tensor) -> torch.Tensor:
    sq = x.pow(2).sum(dim=1, keepdim=True)
    dist = sq + sq.t() - 2.0 * x @ x.t()
    return dist.clamp(min=1e-12).sqrt()


def _softmax_weights(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of `dist` restricted to `mask` (rows with an empty mask get zero weights)."""
    masked = torch.where(mask, dist, torch.full_like(dist, float("-inf")))
    max_v = masked.max(dim=1, keepdim=True).values
    max_v = torch.where(torch.isfinite(max_v), max_v, torch.zeros_like(max_v))
    w = torch.exp(masked - max_v) * mask
    return w / w.sum(dim=1, keepdim=True).clamp(min=1e-6)


def weighted_triplet_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Weighted-regularised triplet (no margin): softmax-weighted hardest positives/negatives.

    For each anchor, the positive distance is the softmax(d)-weighted mean over its positives
    (far ones weigh more) and the negative distance the softmax(-d)-weighted mean over its
    negatives (close ones weigh more); the loss is softplus(d_pos - d_neg). Anchors without a
    positive or a negative in the batch are left out.
    """
    x = features.float()
    dist = _euclidean(x)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = same & ~eye
    neg = ~same
    d_pos = (dist * _softmax_weights(dist, pos)).sum(dim=1)
    d_neg = (dist * _softmax_weights(-dist, neg)).sum(dim=1)
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not valid.any():
        return features.sum() * 0.0
    return F.softplus(d_pos - d_neg)[valid].mean()


def kpr_loss(
    parts_anon: torch.Tensor, parts_raw: torch.Tensor, confidence: torch.Tensor
) -> torch.Tensor:
    """L_kpr: keypoint-pooled features of x_anon match those of x (stop-gradient on raw).

    parts_*: (B, J, D); confidence: (B, J) joint weights (0 for missing joints). The squared
    distance is averaged over channels so the weight `a` does not depend on the width D.
    """
    sq = (parts_anon.float() - parts_raw.detach().float()).pow(2).mean(dim=-1)  # (B, J)
    w = confidence.float()
    total = w.sum()
    if total <= 0:
        return parts_anon.sum() * 0.0
    return (sq * w).sum() / total


def dc_loss(feat_anon: torch.Tensor, feat_raw: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """L_dc: the differential d = f(x_anon) - f(x) is modelled by the modality offset delta_m.

    offsets: (B, D) the offset of each sample's modality. Mean over samples and channels.
    """
    d = feat_anon.float() - feat_raw.float()
    return (d - offsets.float()).pow(2).mean()


def align_rows(
    features: torch.Tensor,
    labels: torch.Tensor,
    modality: torch.Tensor,
    prototypes: torch.Tensor,
    valid: torch.Tensor,
    temperature: float | None = None,
    same_modality: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample L_align toward the identity prototypes of the OTHER modality.

    prototypes: (M, C, D) global per-modality identity prototypes; valid: (M, C) which exist.
    Without `temperature` a sample's term is the cosine distance ``1 - cos(f, p_y)``; with it,
    the prototypes of the other modality act as a classifier and the term is
    ``-log softmax(cos(f, p) / temperature)[y]`` over the valid ones: the pull toward p_y
    then also pushes away from other identities' prototypes, so features cannot meet their
    prototype by collapsing onto a common direction. Returns (rows (N,), count (N,)): the term
    averaged over the other modalities that have the sample's prototype, and how many did
    (rows are 0 where count is 0).

    With `same_modality` the target is the sample's OWN modality's prototype instead (L_proto,
    FedProto's regulariser): pooled over every camera of that modality, it pulls a site that
    holds one camera toward what the identity looks like in the others.
    """
    x = F.normalize(features.float(), dim=-1)
    protos = F.normalize(prototypes.float(), dim=-1)
    total = x.new_zeros(len(labels))
    count = x.new_zeros(len(labels))
    for m in range(prototypes.shape[0]):
        has = ((modality == m) if same_modality else (modality != m)) & valid[m, labels]
        if not has.any():
            continue
        if temperature is None:
            term = 1.0 - (x * protos[m, labels]).sum(dim=-1)
        else:
            logits = (x @ protos[m].T) / temperature
            logits = logits.masked_fill(~valid[m].unsqueeze(0), float("-inf"))
            term = -logits.log_softmax(dim=-1).gather(1, labels.unsqueeze(1)).squeeze(1)
        total = total + torch.where(has, term, torch.zeros_like(term))
        count = count + has.to(x.dtype)
    rows = torch.where(count > 0, total / count.clamp(min=1.0), torch.zeros_like(total))
    return rows, count


def align_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    modality: torch.Tensor,
    prototypes: torch.Tensor,
    valid: torch.Tensor,
    temperature: float | None = None,
    same_modality: bool = False,
) -> torch.Tensor:
    """L_align (see `align_rows`; L_proto with `same_modality`), averaged over the samples
    that have a target prototype."""
    rows, count = align_rows(
        features, labels, modality, prototypes, valid, temperature, same_modality
    )
    used = count > 0
    if not used.any():
        return features.sum() * 0.0
    return rows[used].mean()
