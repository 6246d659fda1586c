"""One local PPA training pass over a loader, and batched feature extraction."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from ppa import losses
from ppa.anonymize import KprAnonymizer
from ppa.data.loader import Batch
from ppa.data.transforms import normalize
from ppa.model import PPAEncoder
from ppa.pose.heatmaps import joint_heatmaps
from ppa.progress_bar import ProgressBar  # log lines, not a bar, when not on a terminal
from ppa.prototypes import IdentityPrototypes, PrototypeAccumulator

logger = logging.getLogger(__name__)

LOSS_TERMS = ("id", "triplet", "kpr", "dc", "align")

# A step that replaces forward/backward/optimizer.step for one batch (DP-SGD: ppa.dp.PrivateStep)
# and returns (loss, terms) like `ppa_step`.
StepHook = Callable[["StepContext", Batch, torch.optim.Optimizer], tuple[torch.Tensor, dict]]


@dataclass(frozen=True)
class PPAObjective:
    """Which views and loss terms a training step uses (configs/ppa/*.yaml)."""

    anonymized_view: bool
    offsets: bool
    weights: Mapping[str, float]
    label_smoothing: float = 0.1
    align_temperature: float | None = None

    @classmethod
    def from_config(cls, ppa_cfg: DictConfig) -> PPAObjective:
        weights = {k: float(ppa_cfg.weights.get(k, 0.0)) for k in LOSS_TERMS}
        if not ppa_cfg.anonymized_view and any(weights[k] for k in ("kpr", "dc")):
            raise ValueError(f"ppa={ppa_cfg.name}: the kpr/dc losses need anonymized_view=true")
        return cls(
            anonymized_view=bool(ppa_cfg.anonymized_view),
            offsets=bool(ppa_cfg.offsets),
            weights=weights,
            label_smoothing=float(ppa_cfg.label_smoothing),
            align_temperature=(
                float(ppa_cfg.align_temperature)
                if ppa_cfg.get("align_temperature") is not None
                else None
            ),
        )

    def uses(self, term: str) -> bool:
        return self.weights.get(term, 0.0) > 0.0


@dataclass(frozen=True)
class DeviceSettings:
    """Where and how tensors run (GPU fast paths switched by config, off on the CPU)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    non_blocking: bool = False
    compile: bool = False

    @classmethod
    def from_config(cls, cfg: DictConfig) -> DeviceSettings:
        device = resolve_device(cfg.get("device", "auto"))
        cuda = device.type == "cuda"
        amp = cfg.train.get("amp", "auto")
        use_amp = cuda if amp == "auto" else bool(amp)
        cl = cfg.train.get("channels_last", "auto")
        return cls(
            device=device,
            amp_dtype=torch.bfloat16 if use_amp and cuda else None,
            channels_last=(cuda if cl == "auto" else bool(cl)),
            non_blocking=cuda,
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def place(self, model: nn.Module) -> nn.Module:
        """Move a model to the device, channels-last when configured, and optionally compile
        its forward (the module and its state-dict keys stay as they are)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile:
            model.forward = torch.compile(model.forward)
        return model

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return (
            images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        )


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} requested but CUDA is not available")
    return device


# Optimiser and schedule ---------------------------------------------------------------------


def create_optimizer(model: PPAEncoder, optimizer_cfg: DictConfig) -> torch.optim.SGD:
    """SGD-Nesterov with the backbone / head learning-rate split of the reference recipe."""
    groups = [
        {
            "params": [p for p in model.backbone_parameters() if p.requires_grad],
            "lr": float(optimizer_cfg.lr_backbone),
            "name": "backbone",
        },
        {
            "params": [p for p in model.head_parameters() if p.requires_grad],
            "lr": float(optimizer_cfg.lr_head),
            "name": "head",
        },
    ]
    for g in groups:
        g["base_lr"] = g["lr"]
    return torch.optim.SGD(
        groups,
        lr=float(optimizer_cfg.lr_head),
        momentum=float(optimizer_cfg.momentum),
        nesterov=bool(optimizer_cfg.nesterov),
        weight_decay=float(optimizer_cfg.weight_decay),
    )


def lr_factor(epoch: int, warmup_epochs: int, steps: Iterable[int], gamma: float) -> float:
    """Linear warm-up over `warmup_epochs`, then x gamma at every step epoch (0-based epoch)."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    return gamma ** sum(1 for s in steps if epoch >= s)


def set_epoch_lr(optimizer: torch.optim.Optimizer, epoch: int, train_cfg: DictConfig) -> float:
    """Set every group's lr for `epoch` (global epoch count, also across federated rounds)."""
    factor = lr_factor(
        epoch, int(train_cfg.warmup_epochs), list(train_cfg.lr_steps), float(train_cfg.lr_gamma)
    )
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return factor


# The training step ----------------------------------------------------------------------------


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
    extra: dict = field(default_factory=dict)
    private_step: StepHook | None = None  # set: DP-SGD does the step (ppa.dp)

    @classmethod
    def from_config(cls, cfg: DictConfig, **fields: Any) -> StepContext:
        """A context whose input normalisation and heatmap settings come from the run config
        (`cfg.input`, `cfg.pose`); `fields` give the rest (model, objective, anonymizer, ...)."""
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


def anonymize(ctx: StepContext, batch: Batch) -> torch.Tensor:
    """Anonymised view of a batch ([0, 1] images); trains a learned anonymiser when present."""
    assert ctx.anonymizer is not None
    if ctx.anonymizer_optimizer is None:
        with torch.no_grad():
            return ctx.anonymizer(batch.images, batch.keypoints, batch.seeds).images
    result = ctx.anonymizer(batch.images, batch.keypoints, batch.seeds)
    terms = ctx.anonymizer.anonymizer.objective(batch.images, result.images, result.masks)
    ctx.anonymizer_optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    ctx.anonymizer_optimizer.step()
    return result.images.detach()


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


def step_inputs(ctx: StepContext, batch: Batch) -> StepInputs:
    """Views (raw + anonymised when the objective uses both), labels, offset mask and heatmaps
    of one batch: what `ppa_step` and the DP per-record losses both forward."""
    obj = ctx.objective
    raw = batch.images
    n = raw.shape[0]
    height, width = raw.shape[-2:]
    views = [raw]
    if obj.anonymized_view:
        views.append(anonymize(ctx, batch))
    nviews = len(views)
    anonymized = None
    if obj.anonymized_view and obj.offsets:
        anonymized = torch.arange(nviews * n, device=raw.device) >= n
    heatmaps = confidence = None
    if obj.uses("kpr"):
        heat, confidence = _heatmaps(ctx, batch.keypoints, height, width)
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
    )


def ppa_step(ctx: StepContext, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward one batch (raw + anonymised views concatenated) and return (loss, terms)."""
    obj, model = ctx.objective, ctx.model
    inputs = step_inputs(ctx, batch)
    n, labels, modality, confidence = inputs.n, inputs.labels, inputs.modality, inputs.confidence
    with ctx.device.autocast():
        out = model(inputs.images, modality, anonymized=inputs.anonymized, heatmaps=inputs.heatmaps)

    terms: dict[str, torch.Tensor] = {}
    terms["id"] = losses.identity_loss(out.logits, labels, obj.label_smoothing)
    terms["triplet"] = losses.weighted_triplet_loss(out.corrected, labels)
    if obj.uses("kpr"):
        assert out.parts is not None and confidence is not None
        terms["kpr"] = losses.kpr_loss(out.parts[n:], out.parts[:n], confidence)
    if obj.uses("dc"):
        terms["dc"] = losses.dc_loss(out.pooled[n:], out.pooled[:n], model.offsets(batch.modality))
    # Alignment and prototypes live in the BNNeck space, the retrieval space: the pooled
    # features are non-negative (ReLU + GeM), so any two of them have a high cosine and a
    # cosine pull toward a prototype there carries almost no signal.
    if obj.uses("align") and ctx.prototypes is not None and ctx.prototypes.valid.any():
        terms["align"] = losses.align_loss(
            out.neck,
            labels,
            modality,
            ctx.prototypes.means,
            ctx.prototypes.valid,
            obj.align_temperature,
        )
    total = sum(obj.weights[k] * v for k, v in terms.items())

    feats = out.neck.detach().float()
    if ctx.accumulator is not None:
        ctx.accumulator.add(feats, labels, modality)
    if ctx.prototype_momentum is not None and ctx.prototypes is not None:
        ctx.prototypes.ema_update(feats, labels, modality, ctx.prototype_momentum)
    return total, {k: float(v.detach()) for k, v in terms.items()}


def train_one_epoch(
    ctx: StepContext,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    max_batches: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over `loader`; returns mean losses, examples seen and timing."""
    model = ctx.model
    model.train()
    sums: dict[str, float] = {}
    batches = examples = 0
    start = time.perf_counter()
    total_batches = len(loader) if hasattr(loader, "__len__") else None
    if max_batches is not None and total_batches is not None:
        total_batches = min(total_batches, max_batches)
    bar = ProgressBar(loader, total=total_batches, desc=desc, disable=not progress, leave=False)
    for batch in bar:
        if max_batches is not None and batches >= max_batches:
            break
        batch = batch.to(ctx.device.device, non_blocking=ctx.device.non_blocking)
        if ctx.private_step is not None:
            # DP-SGD: per-record losses, clipping, noise and the step happen in the hook.
            loss, terms = ctx.private_step(ctx, batch, optimizer)
        else:
            loss, terms = ppa_step(ctx, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {float(loss)} ({terms})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        batches += 1
        examples += batch.images.shape[0]
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        for k, v in terms.items():
            sums[f"loss_{k}"] = sums.get(f"loss_{k}", 0.0) + v
        bar.set_postfix(loss=f"{sums['loss'] / batches:.3f}")
    seconds = time.perf_counter() - start
    metrics = {k: v / max(batches, 1) for k, v in sums.items()}
    metrics.update(
        batches=float(batches),
        num_examples=float(examples),
        seconds=seconds,
        images_per_second=examples / seconds if seconds > 0 else 0.0,
    )
    return metrics


# Feature extraction ---------------------------------------------------------------------------


@dataclass
class FeatureSet:
    """Retrieval features (N, D) on the CPU, in loader order, with their labels."""

    features: torch.Tensor
    pids: torch.Tensor
    cams: torch.Tensor
    modality: torch.Tensor


VIEWS = ("raw", "anon")


@torch.no_grad()
def extract_features(
    model: PPAEncoder,
    loader: Iterable[Batch],
    *,
    device: DeviceSettings,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    views: tuple[str, ...] = ("raw",),
    anonymizer: KprAnonymizer | None = None,
    correct_offsets: bool = True,
    flip: bool = False,
    progress: bool = True,
    desc: str = "features",
) -> dict[str, FeatureSet]:
    """BNNeck features of every image for each requested view, in one pass over the loader.

    View "raw" uses the images as they are; "anon" anonymises them first with `anonymizer` and,
    when `correct_offsets`, corrects the features by their modality's DCMA offset. With `flip`,
    features of the image and its mirror are summed.
    """
    unknown = set(views) - set(VIEWS)
    if unknown:
        raise ValueError(f"unknown feature views {sorted(unknown)}; expected {VIEWS}")
    if "anon" in views and anonymizer is None:
        raise ValueError("the 'anon' view needs an anonymizer")
    model.eval()
    feats: dict[str, list[torch.Tensor]] = {v: [] for v in views}
    pids, cams, mods = [], [], []
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in ProgressBar(loader, total=total, desc=desc, disable=not progress, leave=False):
        batch = batch.to(device.device, non_blocking=device.non_blocking)
        for view in views:
            images, anonymized = batch.images, None
            if view == "anon":
                assert anonymizer is not None
                images = anonymizer(images, batch.keypoints, batch.seeds).images
                if correct_offsets:
                    anonymized = torch.ones_like(batch.labels, dtype=torch.bool)
            x = device.prepare(normalize(images, mean, std))
            with device.autocast():
                f = model(x, batch.modality, anonymized=anonymized).neck.float()
                if flip:
                    f = (
                        f
                        + model(
                            torch.flip(x, dims=[3]), batch.modality, anonymized=anonymized
                        ).neck.float()
                    )
            feats[view].append(f.cpu())
        pids.append(batch.labels.cpu())
        cams.append(batch.cams.cpu())
        mods.append(batch.modality.cpu())
    if not pids:
        raise ValueError("extract_features: the loader produced no batches")
    pid_t, cam_t, mod_t = torch.cat(pids), torch.cat(cams), torch.cat(mods)
    return {v: FeatureSet(torch.cat(f), pid_t, cam_t, mod_t) for v, f in feats.items()}
