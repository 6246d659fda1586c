"""One PPA training step: the concatenated raw + anonymised views, the losses, prototypes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from ppa import losses
from ppa.anonymize import KprAnonymizer
from ppa.data.loader import Batch
from ppa.data.transforms import normalize
from ppa.device import DeviceSettings
from ppa.model import PPAEncoder
from ppa.pose.heatmaps import joint_heatmaps
from ppa.pose.joint_sets import ALL_JOINTS
from ppa.prototypes import IdentityPrototypes, PrototypeAccumulator
from ppa.training.objective import PROTOTYPE_TERMS, PPAObjective
from ppa.training.pseudo_infrared import PseudoInfraredViews

# A step that replaces forward/backward/optimizer.step for one batch (DP-SGD: ppa.dp.PrivateStep)
# and returns (loss, terms) like `ppa_step`.
StepHook = Callable[["StepContext", Batch, torch.optim.Optimizer], tuple[torch.Tensor, dict]]


@dataclass
class StepContext:
    """Everything a step needs besides the batch."""

    model: PPAEncoder
    objective: PPAObjective
    anonymizer: KprAnonymizer | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    heatmap_sigma: float
    min_confidence: float
    device: DeviceSettings
    prototypes: IdentityPrototypes | None = None
    accumulator: PrototypeAccumulator | None = None
    prototype_momentum: float | None = None  # set: EMA-update `prototypes` (central training)
    anonymizer_optimizer: torch.optim.Optimizer | None = None
    private_step: StepHook | None = None  # set: DP-SGD does the step (ppa.dp)
    # set: rewrites each training batch before the step (ppa.training.pseudo_infrared)
    batch_views: Callable[[Batch], Batch] | None = None
    # set: each identity logit multiplied by its class's factor before the identity loss
    # (ppa.training.restricted_softmax: a site's absent identities)
    class_logit_scale: torch.Tensor | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig, **fields: Any) -> StepContext:
        """A context whose input normalisation and heatmap settings come from the run config
        (`cfg.input`, `cfg.pose`) and its batch rewrite from `cfg.train.pseudo_infrared`;
        `fields` give the rest (model, objective, anonymizer, ...)."""
        if "batch_views" not in fields:
            fields["batch_views"] = PseudoInfraredViews.from_config(cfg.train)
        return cls(
            mean=tuple(cfg.input.mean),
            std=tuple(cfg.input.std),
            heatmap_sigma=float(cfg.pose.heatmap_sigma),
            min_confidence=float(cfg.pose.min_confidence),
            **fields,
        )


def _heatmaps(
    ctx: StepContext, keypoints: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-joint heatmaps at the trunk's feature-map size, and the joint weights."""
    fh, fw = ctx.model.feature_size(height, width)
    maps = joint_heatmaps(
        keypoints,
        fh,
        fw,
        sigma=ctx.heatmap_sigma,
        min_confidence=ctx.min_confidence,
        scale=fh / height,
    )
    return maps.heatmaps, maps.weights


def anonymize(ctx: StepContext, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Anonymised view of a batch ([0, 1] images) and, when the anonymiser trains
    (`ctx.anonymizer_optimizer`), its own loss terms. The view carries the anonymiser's graph
    only when the re-id loss trains it as well (``secure_reid``, SecureReID's joint learning);
    a ``learned`` generator follows its own objective alone."""
    assert ctx.anonymizer is not None
    if ctx.anonymizer_optimizer is None:
        with torch.no_grad():
            return ctx.anonymizer(batch.images, batch.keypoints, batch.noise_keys).images, {}
    result = ctx.anonymizer(batch.images, batch.keypoints, batch.noise_keys)
    terms = ctx.anonymizer.training_loss(batch.images, result, batch.noise_keys)
    if ctx.anonymizer.anonymizer.trains_with_reid_loss:
        return result.images, terms
    return result.images.detach(), terms


@dataclass(frozen=True)
class StepInputs:
    """A batch laid out for the one concatenated forward: raw views first, then anonymised."""

    images: torch.Tensor  # (V * n, 3, H, W), normalised and placed
    labels: torch.Tensor  # (V * n,)
    modality: torch.Tensor  # (V * n,)
    anonymized: torch.Tensor | None  # (V * n,) bool, when anonymised features are corrected
    heatmaps: torch.Tensor | None  # (V * n, J, h, w), when L_kpr is on
    confidence: torch.Tensor | None  # (n, J) joint weights, when L_kpr is on
    n: int  # records in the batch
    nviews: int
    # a training anonymiser's own loss terms (their weighted sum under "total"); empty otherwise
    anonymizer_terms: dict[str, torch.Tensor]


def step_inputs(ctx: StepContext, batch: Batch) -> StepInputs:
    """Views (raw + anonymised when the objective uses both), labels, offset mask and heatmaps
    of one batch: what `ppa_step` and the DP per-record losses both forward."""
    obj = ctx.objective
    raw = batch.images
    n = raw.shape[0]
    height, width = raw.shape[-2:]
    views = [raw]
    anonymizer_terms: dict[str, torch.Tensor] = {}
    if obj.anonymized_view:
        anon, anonymizer_terms = anonymize(ctx, batch)
        views.append(anon)
    nviews = len(views)
    anonymized = None
    if obj.anonymized_view and obj.offsets:
        anonymized = torch.arange(nviews * n, device=raw.device) >= n
    heatmaps = confidence = None
    if obj.uses("kpr"):
        heat, confidence = _heatmaps(ctx, batch.keypoints, height, width)
        if obj.kpr_joints != ALL_JOINTS:
            joints = list(obj.kpr_joints)
            heat, confidence = heat[:, joints], confidence[:, joints]
        heatmaps = heat.repeat(nviews, 1, 1, 1)
    return StepInputs(
        images=ctx.device.prepare(normalize(torch.cat(views), ctx.mean, ctx.std)),
        labels=batch.labels.repeat(nviews),
        modality=batch.modality.repeat(nviews),
        anonymized=anonymized,
        heatmaps=heatmaps,
        confidence=confidence,
        n=n,
        nviews=nviews,
        anonymizer_terms=anonymizer_terms,
    )


def ppa_step(ctx: StepContext, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward one batch (raw + anonymised views concatenated) and return (loss, terms)."""
    obj, model = ctx.objective, ctx.model
    inputs = step_inputs(ctx, batch)
    n, labels, modality, confidence = inputs.n, inputs.labels, inputs.modality, inputs.confidence
    with ctx.device.autocast():
        out = model(inputs.images, modality, anonymized=inputs.anonymized, heatmaps=inputs.heatmaps)

    terms: dict[str, torch.Tensor] = {}
    logits = out.logits if ctx.class_logit_scale is None else out.logits * ctx.class_logit_scale
    terms["id"] = losses.identity_loss(
        logits, labels, obj.label_smoothing, margin=model.identity_margin
    )
    terms["triplet"] = losses.weighted_triplet_loss(out.corrected, labels)
    if obj.uses("kpr"):
        assert out.parts is not None and confidence is not None
        terms["kpr"] = losses.kpr_loss(out.parts[n:], out.parts[:n], confidence)
    if obj.uses("dc"):
        terms["dc"] = losses.dc_loss(out.pooled[n:], out.pooled[:n], model.offsets(batch.modality))
    # Alignment and prototypes live in the BNNeck space, the retrieval space: the pooled
    # features are non-negative (ReLU + GeM), so any two of them have a high cosine and a
    # cosine pull toward a prototype there carries almost no signal.
    for term in PROTOTYPE_TERMS:
        if obj.uses(term) and ctx.prototypes is not None and ctx.prototypes.valid.any():
            terms[term] = losses.align_loss(
                out.neck,
                labels,
                modality,
                ctx.prototypes.means,
                ctx.prototypes.valid,
                obj.align_temperature,
                same_modality=term == "proto",
            )
    total = sum(obj.weights[k] * v for k, v in terms.items())
    # The anonymiser's objective reaches only its own networks (and, through the anonymised
    # view, the re-id loss reaches a jointly trained one): one backward serves both optimisers.
    if inputs.anonymizer_terms:
        total = total + inputs.anonymizer_terms["total"]
        terms.update({f"anonymizer_{k}": v for k, v in inputs.anonymizer_terms.items()})

    # Prototypes hold both views by default: BNNeck(f) of raw images and BNNeck(g) of
    # anonymised ones, g = f(x_anon) - delta_m the corrected feature; retrieval compares
    # exactly these two (ppa.prototype_views picks one of them instead).
    rows = obj.prototype_rows(n)
    feats = out.neck.detach().float()[rows]
    proto_labels, proto_modality = labels[rows], modality[rows]
    if ctx.accumulator is not None:
        ctx.accumulator.add(feats, proto_labels, proto_modality)
    if ctx.prototype_momentum is not None and ctx.prototypes is not None:
        ctx.prototypes.ema_update(feats, proto_labels, proto_modality, ctx.prototype_momentum)
    return total, {k: float(v.detach()) for k, v in terms.items()}
