"""DP-SGD for the PPA objective: per-record losses, per-record clipping, Gaussian noise.

The privacy unit is one training image (a record). A PPA step feeds each record twice (raw
and anonymised view) through one concatenated forward, so opacus's per-sample gradients come
per *row*; the two rows of a record are summed into the record's gradient before it is
clipped to `max_grad_norm`, so the clip bounds the record's whole influence. Every loss term
is a function of one record (and of public inputs: the weights, the server's prototypes):
identity, L_kpr, L_dc and L_align are reduced per record here, the weighted triplet (which
compares records of a batch) is left out. The model must use per-sample normalisation
(``model.norm=group``): BatchNorm mixes the records of a batch.

Per-sample gradients come from opacus's hooks (`GradSampleHooks`, attached to the model in
place, so its state-dict names do not change; the rules for PPA's own layers are in
`ppa.dp.grad_samplers`); clipping, noise and the step are done here.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ppa import losses
from ppa.data.loader import Batch
from ppa.data.records import Modality
from ppa.dp.clipping import ClipGroups, clip_and_sum
from ppa.model import PPAEncoder
from ppa.model.finetune import is_frozen_norm
from ppa.training.objective import PROTOTYPE_TERMS
from ppa.training.step import StepContext, step_inputs

logger = logging.getLogger(__name__)


class PrivateModelError(ValueError):
    """A model that DP-SGD cannot train with a per-record guarantee."""


def check_private_model(model: PPAEncoder) -> None:
    """Refuse models whose layers couple the records of a batch."""
    coupled = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not is_frozen_norm(module)
    ]
    if coupled:
        raise PrivateModelError(
            f"DP-SGD needs per-sample normalisation but the model has BatchNorm at "
            f"{coupled[:3]}{'...' if len(coupled) > 3 else ''}: set model.norm=group "
            "(privacy=dp does), or freeze its statistics (privacy=dp_finetune)"
        )


def freeze_other_modalities(model: PPAEncoder, keep: Modality) -> list[str]:
    """Freeze the stems and offsets of every modality but `keep`; returns their names.

    A site of one modality never feeds the other stem a sample, and never sends it: under
    DP it must not be updated by noise either.
    """
    frozen = []
    for name, param in model.named_parameters():
        head, _, rest = name.partition(".")
        if head in ("stems", "offsets") and Modality.parse(rest.split(".", 1)[0]) != keep:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def per_record_losses(
    ctx: StepContext, batch: Batch
) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Forward a batch (raw + anonymised views concatenated) and return per-record losses.

    Returns (total (n,), terms {name: (n,)}, number of views). Each record's loss depends on
    that record only: identity = mean over its views of the label-smoothed CE; L_kpr
    normalised by the record's own joint confidences; L_dc = mean over channels of
    (f(x_anon) - f(x) - delta_m)^2; L_align = mean over its views.
    """
    obj, model = ctx.objective, ctx.model
    inputs = step_inputs(ctx, batch)
    n, nviews, labels, modality = inputs.n, inputs.nviews, inputs.labels, inputs.modality
    confidence = inputs.confidence
    # fp32 on purpose: per-sample gradients and their norms are what the guarantee rests on.
    out = model(inputs.images, modality, anonymized=inputs.anonymized, heatmaps=inputs.heatmaps)

    def over_views(rows: torch.Tensor) -> torch.Tensor:
        return rows.view(nviews, n).mean(dim=0)

    terms: dict[str, torch.Tensor] = {}
    terms["id"] = over_views(
        losses.identity_loss(
            out.logits,
            labels,
            obj.label_smoothing,
            margin=model.identity_margin,
            reduction="none",
        )
    )
    if obj.uses("kpr"):
        assert out.parts is not None and confidence is not None
        sq = (out.parts[n:].float() - out.parts[:n].detach().float()).pow(2).mean(dim=-1)
        w = confidence.float()
        mass = w.sum(dim=1)
        terms["kpr"] = torch.where(
            mass > 0, (sq * w).sum(dim=1) / mass.clamp(min=1e-12), torch.zeros_like(mass)
        )
    if obj.uses("dc"):
        if inputs.anonymized is not None:
            # corrected[n:] = f(x_anon) - delta_m: no second call of the offsets module (a
            # module hooked twice in one pass confuses per-sample bookkeeping).
            diff = out.corrected[n:] - out.pooled[:n]
        else:
            diff = out.pooled[n:] - out.pooled[:n] - model.offsets(batch.modality)
        terms["dc"] = diff.float().pow(2).mean(dim=-1)
    for term in PROTOTYPE_TERMS:
        if obj.uses(term) and ctx.prototypes is not None and ctx.prototypes.valid.any():
            terms[term] = over_views(
                losses.align_rows(
                    out.neck,
                    labels,
                    modality,
                    ctx.prototypes.means,
                    ctx.prototypes.valid,
                    obj.align_temperature,
                    same_modality=term == "proto",
                )[0]
            )
    total = sum(obj.weights[k] * v for k, v in terms.items())
    assert isinstance(total, torch.Tensor)
    return total, terms, nviews


class PerSampleGradients:
    """opacus's per-sample-gradient hooks on a PPA model, reduced to per-record gradients.

    Attach once per model (after freezing what must not train): the trainable parameter set
    is fixed at construction.
    """

    def __init__(self, model: PPAEncoder):
        check_private_model(model)
        self.model = model
        self.params: list[tuple[str, nn.Parameter]] = [
            (name, p) for name, p in model.named_parameters() if p.requires_grad
        ]
        if not self.params:
            raise PrivateModelError("the model has no trainable parameters")
        self._stem_modality = {
            name: Modality.parse(name.split(".")[1]).index
            for name, _ in self.params
            if name.startswith("stems.")
        }
        # opacus's strict check refuses trainable modules with buffers; the only ones a
        # private model may have are frozen BatchNorm statistics (checked above), under the
        # BNNeck's trained affine.
        frozen_norms = any(is_frozen_norm(m) for m in model.modules())
        # opacus (and the rules it is given for PPA's layers) is imported here, not at module
        # level: every site and server process imports ppa.dp, and importing opacus costs
        # about 2 s of each process's start, which runs without DP too.
        from opacus.grad_sample import GradSampleHooks

        from ppa.dp.grad_samplers import out_of_place_after_trained_norms

        out_of_place_after_trained_norms(model)
        self.hooks = GradSampleHooks(model, loss_reduction="sum", strict=not frozen_norms)

    def per_record(self, num_records: int, row_modality: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: (n, *shape)}: each record's gradient, its views' rows summed.

        Rows are ordered view by view (rows i, n+i, ... belong to record i). A stem only sees
        the rows of its modality, in order, so its rows are scattered back first.
        """
        rows = row_modality.shape[0]
        if rows % num_records:
            raise ValueError(f"{rows} rows are not a whole number of views of {num_records}")
        nviews = rows // num_records
        out: dict[str, torch.Tensor] = {}
        for name, p in self.params:
            gs = getattr(p, "grad_sample", None)
            if gs is None:  # not reached this step (e.g. the stem of an absent modality)
                out[name] = p.new_zeros((num_records, *p.shape))
                continue
            if isinstance(gs, list):
                raise RuntimeError(
                    f"{name}: per-sample gradients of several backward passes were "
                    "accumulated; a DP step takes exactly one"
                )
            if name in self._stem_modality:
                sel = (row_modality == self._stem_modality[name]).nonzero(as_tuple=True)[0]
                if gs.shape[0] != sel.numel():
                    raise RuntimeError(
                        f"{name}: {gs.shape[0]} per-sample rows for {sel.numel()} rows of "
                        "its modality"
                    )
                full = gs.new_zeros((rows, *p.shape))
                full[sel] = gs
                gs = full
            elif gs.shape[0] != rows:
                raise RuntimeError(
                    f"{name}: {gs.shape[0]} per-sample rows, expected {rows}: a hooked module "
                    "ran on part of the batch"
                )
            out[name] = gs.view(nviews, num_records, *p.shape).sum(dim=0)
        return out

    def backward(self, per_record_loss: torch.Tensor) -> None:
        """Backpropagate the summed per-record losses (opacus hooks: loss_reduction="sum")."""
        with warnings.catch_warnings():
            # The first conv's input needs no gradient; opacus's hook still gets what it
            # needs (the gradient w.r.t. the module output).
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            per_record_loss.sum().backward()

    def reset(self) -> None:
        """Drop per-sample state (also after a failed step, so the next one starts clean)."""
        for _, p in self.params:
            p.grad_sample = None
            p._forward_counter = 0
            if hasattr(p, "_current_grad_sample"):
                del p._current_grad_sample
        for module in self.model.modules():
            for attr in ("activations", "max_batch_len"):
                if hasattr(module, attr):
                    delattr(module, attr)

    def close(self) -> None:
        """Remove the hooks and opacus's attributes from the model."""
        self.hooks.cleanup()


class PrivateStep:
    """The DP-SGD step hook for `ppa.training.loop.train_one_epoch` (``StepContext.private_step``).

    grad = (sum_r clip_C(g_r) + N(0, (sigma C)^2)) / expected_batch_size, with g_r the gradient
    of record r's loss (with augmentation multiplicity: the mean over the record's copies,
    which the batch holds as consecutive rows); then the optimizer steps. With `clip_groups`
    each group is clipped to its own C_k and noised with sigma sqrt(K) C_k over K groups
    (`ppa.dp.clipping`). Empty Poisson batches still take a noise-only step (the accountant
    counts every step).
    """

    def __init__(
        self,
        grads: PerSampleGradients,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        seed: int,
        clip_groups: Mapping[str, float] | None = None,
        multiplicity: int = 1,
        physical_batch: int | None = None,
        after_step: Callable[[], None] | None = None,
    ):
        if multiplicity < 1 or (physical_batch is not None and physical_batch < 1):
            raise ValueError(
                f"DP step needs multiplicity >= 1 ({multiplicity}) and physical batch >= 1 "
                f"({physical_batch})"
            )
        if noise_multiplier <= 0 or max_grad_norm <= 0 or expected_batch_size <= 0:
            raise ValueError(
                f"DP step needs positive noise ({noise_multiplier}), clip ({max_grad_norm}) "
                f"and expected batch size ({expected_batch_size})"
            )
        self.grads = grads
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.clip_groups = ClipGroups.build(
            (name for name, _ in grads.params), self.max_grad_norm, clip_groups
        )
        self.expected_batch_size = float(expected_batch_size)
        self.multiplicity = int(multiplicity)
        self.physical_batch = physical_batch
        self.after_step = after_step
        device = grads.params[0][1].device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(seed) % 2**63)
        self.steps = 0
        self.records = 0
        self.clipped = 0  # records whose gradient was scaled down (local diagnostics only)

    def _check_context(self, ctx: StepContext) -> None:
        if ctx.model is not self.grads.model:
            raise ValueError("the DP step's hooks are attached to another model than ctx.model")
        if ctx.prototype_momentum is not None or ctx.accumulator is not None:
            raise ValueError(
                "under DP, prototypes from training batches are not private: release them "
                "with ppa.dp.release_prototypes instead of an EMA/accumulator"
            )
        if ctx.anonymizer_optimizer is not None:
            raise ValueError("under DP the learned anonymiser cannot train on private images")

    def __call__(
        self, ctx: StepContext, batch: Batch, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.Tensor, dict[str, float]]:
        self._check_context(ctx)
        k = self.multiplicity
        if len(batch) % k:
            raise ValueError(
                f"a batch of {len(batch)} rows is not {k} augmented copies of each record"
            )
        n = len(batch) // k
        optimizer.zero_grad(set_to_none=True)
        self.grads.reset()
        summed = {name: torch.zeros_like(p) for name, p in self.grads.params}
        loss_sum, terms_sum = torch.zeros(()), {}
        chunk = self.physical_batch or max(n, 1)
        # Virtual steps: records in chunks of `physical_batch`, clipped sums added up, one
        # noise draw and one optimiser step for the whole Poisson batch.
        for start in range(0, n, chunk):
            part = batch.rows(start * k, min(start + chunk, n) * k)  # a physical chunk
            m = len(part) // k
            total, terms, nviews = per_record_losses(ctx, part)
            if not torch.isfinite(total).all():
                self.grads.reset()
                raise FloatingPointError("non-finite training loss under DP")
            self.grads.backward(total)
            try:
                per_row = self.grads.per_record(m * k, part.modality.repeat(nviews))
            finally:
                self.grads.reset()
            # A record's gradient is the mean over its K augmented copies (rows r*K .. r*K+K-1).
            per_record = {
                name: g.view(m, k, *g.shape[1:]).mean(dim=1) for name, g in per_row.items()
            }
            part_sum, norms = clip_and_sum(per_record, self.clip_groups)
            for name in summed:
                summed[name] += part_sum[name]
            self.clipped += int(self.clip_groups.scaled_down(norms).sum())
            loss_sum = loss_sum + total.detach().sum().cpu() / k
            for key, value in terms.items():
                terms_sum[key] = terms_sum.get(key, 0.0) + float(value.detach().sum()) / k
        loss = loss_sum / max(n, 1)
        terms_out = {key: v / n for key, v in terms_sum.items()} if n else {}
        for name, p in self.grads.params:
            std = self.clip_groups.noise_std(name, self.noise_multiplier)
            noise = torch.randn(p.shape, generator=self.generator, device=p.device) * std
            p.grad = (summed[name] + noise) / self.expected_batch_size
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.after_step is not None:
            self.after_step()  # e.g. the parameter average: post-processing of the released step
        self.steps += 1
        self.records += n
        return loss, terms_out
