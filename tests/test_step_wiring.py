"""The wiring of the PPA objective inside `ppa_step`.

Each loss term must send its gradient to exactly the parameters the method says (stems,
trunk, DCMA offsets, neck, classifier), L_kpr must stop the gradient on the raw side, only
anonymised views are offset-corrected, and the returned loss is the configured weighted sum
of the terms. Every check compares against quantities recomputed by hand from the forward
pass the step itself ran (captured with forward hooks), so a rewired step cannot agree with
them by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from ppa import losses
from ppa.anonymize import KprAnonymizer
from ppa.config import load_config
from ppa.data.keypoints import load_dataset_keypoints
from ppa.data.loader import Batch, create_train_loader
from ppa.data.noise_keys import NoiseKeys
from ppa.data.protocols import load_train_set
from ppa.data.transforms import normalize
from ppa.device import DeviceSettings
from ppa.model import EncoderOutput, PPAEncoder, create_model
from ppa.pose.heatmaps import joint_heatmaps
from ppa.prototypes import IdentityPrototypes, PrototypeAccumulator
from ppa.training.loop import train_one_epoch
from ppa.training.objective import PPAObjective
from ppa.training.restricted_softmax import absent_class_logit_scale
from ppa.training.step import StepContext, ppa_step, step_inputs

from conftest import tiny_overrides

TERMS = ("id", "triplet", "kpr", "dc", "align", "proto")


@pytest.fixture(scope="module")
def wiring_cfg(tiny_sysu_root: Path, tmp_path_factory: pytest.TempPathFactory) -> DictConfig:
    return load_config(tiny_overrides(tiny_sysu_root, tmp_path_factory.mktemp("wiring")))


@pytest.fixture(scope="module")
def batch(wiring_cfg: DictConfig) -> Batch:
    """One P x K batch of both modalities from the tiny synthetic SYSU set."""
    train_set = load_train_set(wiring_cfg.dataset)
    loader = create_train_loader(
        train_set.records,
        train_set.root,
        input_cfg=wiring_cfg.input,
        train_cfg=wiring_cfg.train,
        pose_cfg=wiring_cfg.pose,
        keypoints=load_dataset_keypoints(train_set.root),
        seed=0,
    )
    loader.batch_sampler.set_epoch(0)
    first = next(iter(loader))
    assert set(first.modality.tolist()) == {0, 1}
    return first


@dataclass
class Captured:
    """What the step's one forward pass produced, with the trunk map's gradient retained."""

    out: EncoderOutput | None = None
    feature_map: torch.Tensor | None = None
    anonymized: torch.Tensor | None = None


@contextmanager
def capture(model: PPAEncoder) -> Iterator[Captured]:
    seen = Captured()

    def on_trunk(_module, _inputs, output):
        if output.requires_grad:  # not the no-grad probe of `feature_size`
            output.retain_grad()
            seen.feature_map = output

    def on_model(_module, _args, kwargs, output):
        seen.out = output
        seen.anonymized = kwargs.get("anonymized")

    hooks = [
        model.trunk.register_forward_hook(on_trunk),
        model.register_forward_hook(on_model, with_kwargs=True),
    ]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def make_context(
    cfg: DictConfig, num_classes: int, *, ppa: str = "full", weights: dict | None = None
) -> StepContext:
    """A fresh model (offsets and prototypes non-zero, so every term has a gradient)."""
    cfg = load_config([*cfg_overrides(cfg), f"ppa={ppa}"])
    torch.manual_seed(0)
    model = create_model(cfg.model, num_classes)
    with torch.no_grad():
        for name, param in model.offsets.named_parameters():
            param.copy_(torch.randn_like(param) * (0.5 if name == "visible" else 0.3))
    objective = PPAObjective.from_config(cfg.ppa)
    if weights is not None:
        objective = replace(objective, weights={k: float(weights.get(k, 0.0)) for k in TERMS})
    generator = torch.Generator().manual_seed(1)
    prototypes = IdentityPrototypes(
        torch.randn(2, num_classes, model.num_features, generator=generator),
        torch.ones(2, num_classes, dtype=torch.bool),
    )
    return StepContext.from_config(
        cfg,
        model=model,
        objective=objective,
        anonymizer=KprAnonymizer.from_config(cfg),
        device=DeviceSettings.from_config(cfg),
        prototypes=prototypes,
    )


def cfg_overrides(cfg: DictConfig) -> list[str]:
    return [
        f"dataset.root={cfg.dataset.root}",
        "model=tiny",
        f"input.height={cfg.input.height}",
        f"input.width={cfg.input.width}",
    ]


def run_step(ctx: StepContext, batch: Batch) -> tuple[torch.Tensor, dict, Captured]:
    ctx.model.train()
    ctx.model.zero_grad(set_to_none=True)
    with capture(ctx.model) as seen:
        total, terms = ppa_step(ctx, batch)
        total.backward()
    return total, terms, seen


def grad_norm(params) -> float:
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


def groups(model: PPAEncoder) -> dict[str, list[torch.nn.Parameter]]:
    return {
        "stem_visible": list(model.stems["visible"].parameters()),
        "stem_infrared": list(model.stems["infrared"].parameters()),
        "trunk": list(model.trunk.parameters()),
        "offset_visible": [model.offsets.visible],
        "offset_infrared": [model.offsets.infrared],
        "neck": [model.neck.weight],
        "classifier": [model.classifier.weight],
    }


NUM_CLASSES = 10


# Which parameter groups each term (alone, weight 1) must and must not reach.
REACHES = {
    # CE over the classifier of BNNeck(g): g carries the offsets of the anonymised rows.
    "id": {"stem_visible", "stem_infrared", "trunk", "offset_visible", "offset_infrared"}
    | {"neck", "classifier"},
    # Triplet on f and g (pre-BNNeck): no neck, no classifier.
    "triplet": {"stem_visible", "stem_infrared", "trunk", "offset_visible", "offset_infrared"},
    # Keypoint-pooled trunk maps only.
    "kpr": {"stem_visible", "stem_infrared", "trunk"},
    # d - delta_m on the pooled features.
    "dc": {"stem_visible", "stem_infrared", "trunk", "offset_visible", "offset_infrared"},
    # Cosine pull of BNNeck(g) toward prototypes: neck yes, classifier no.
    "align": {"stem_visible", "stem_infrared", "trunk", "offset_visible", "offset_infrared"}
    | {"neck"},
    # The same pull toward the sample's own modality's prototypes.
    "proto": {"stem_visible", "stem_infrared", "trunk", "offset_visible", "offset_infrared"}
    | {"neck"},
}


@pytest.mark.parametrize("term", TERMS)
def test_each_term_reaches_exactly_its_parameters(
    term: str, wiring_cfg: DictConfig, batch: Batch
) -> None:
    ctx = make_context(wiring_cfg, NUM_CLASSES, weights={term: 1.0})
    _, terms, _ = run_step(ctx, batch)
    assert term in terms
    reached = {name for name, params in groups(ctx.model).items() if grad_norm(params) > 0}
    assert reached == REACHES[term], f"L_{term} reaches {sorted(reached)}"


def test_under_bf16_autocast_the_losses_run_in_float32(
    wiring_cfg: DictConfig, batch: Batch
) -> None:
    ctx = make_context(wiring_cfg, NUM_CLASSES)
    total32, terms32, _ = run_step(ctx, batch)
    mixed = replace(ctx, device=replace(ctx.device, amp_dtype=torch.bfloat16))
    total, terms, seen = run_step(mixed, batch)
    # The classifier is a matmul, which autocast runs in bf16.
    assert seen.out is not None and seen.out.logits.dtype == torch.bfloat16
    assert total.dtype == torch.float32
    # L_id by hand in float32 from the bf16 logits: a cross-entropy taken in bf16 would
    # only agree to bf16's three digits.
    by_hand = losses.identity_loss(
        seen.out.logits.float(),
        batch.labels.repeat(2),  # raw and anonymised views
        mixed.objective.label_smoothing,
        margin=mixed.model.identity_margin,
    )
    assert terms["id"] == pytest.approx(float(by_hand), rel=1e-6, abs=0)
    assert set(terms) == set(terms32)
    for term, value in terms32.items():
        # bf16 keeps 8 bits of mantissa: the same terms to a few per cent, not to the digit.
        assert terms[term] == pytest.approx(value, rel=0.1, abs=0.02), term
    assert float(total) != float(total32)
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32
        for p in ctx.model.parameters()
        if p.grad is not None
    )


def test_kpr_stops_the_gradient_on_the_raw_side(wiring_cfg: DictConfig, batch: Batch) -> None:
    ctx = make_context(wiring_cfg, NUM_CLASSES, weights={"kpr": 1.0})
    _, terms, seen = run_step(ctx, batch)
    n = len(batch)
    grad = seen.feature_map.grad
    assert grad is not None
    assert torch.count_nonzero(grad[:n]) == 0, "L_kpr sends gradient into the raw view"
    assert grad[n:].abs().sum() > 0, "L_kpr sends no gradient into the anonymised view"
    # The value is the confidence-weighted squared distance of the pooled parts, by hand.
    fh, fw = seen.feature_map.shape[-2:]
    maps = joint_heatmaps(
        batch.keypoints,
        fh,
        fw,
        sigma=ctx.heatmap_sigma,
        min_confidence=ctx.min_confidence,
        scale=fh / batch.images.shape[-2],
    )
    joints = list(ctx.objective.kpr_joints)
    assert joints == list(range(5, 17))  # the body joints, no head joints (the default)
    heat = maps.heatmaps[:, joints].repeat(2, 1, 1, 1)  # same joints on both views
    fmap = seen.feature_map.detach()
    parts = torch.einsum("bchw,bjhw->bjc", fmap, heat) / heat.sum(dim=(-2, -1)).clamp(
        min=1e-6
    ).unsqueeze(-1)
    assert torch.allclose(parts, seen.out.parts.detach(), atol=1e-5)
    sq = (parts[n:] - parts[:n]).pow(2).mean(-1)
    weights = maps.weights[:, joints]
    expected = float((sq * weights).sum() / weights.sum())
    assert terms["kpr"] == pytest.approx(expected, rel=1e-4)


def test_dc_learns_the_offset_from_both_views(wiring_cfg: DictConfig, batch: Batch) -> None:
    ctx = make_context(wiring_cfg, NUM_CLASSES, weights={"dc": 1.0})
    _, terms, seen = run_step(ctx, batch)
    n = len(batch)
    pooled = seen.out.pooled.detach()
    offsets = ctx.model.offsets(batch.modality).detach()
    residual = pooled[n:] - pooled[:n] - offsets
    assert terms["dc"] == pytest.approx(float(residual.pow(2).mean()), rel=1e-5)
    # d/d delta_m of mean (d - delta)^2 = -2 / (n D) * sum over rows of modality m.
    dim = pooled.shape[1]
    for index, name in enumerate(("visible", "infrared")):
        rows = batch.modality == index
        expected = -2.0 * residual[rows].sum(0) / (n * dim)
        got = getattr(ctx.model.offsets, name).grad
        assert got is not None, f"L_dc sends no gradient to offsets.{name}"
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-9)
    # No stop-gradient in L_dc: both views' trunk maps receive gradient.
    grad = seen.feature_map.grad
    assert grad[:n].abs().sum() > 0 and grad[n:].abs().sum() > 0


def test_only_anonymised_views_are_corrected(wiring_cfg: DictConfig, batch: Batch) -> None:
    ctx = make_context(wiring_cfg, NUM_CLASSES)
    _, _, seen = run_step(ctx, batch)
    n = len(batch)
    assert seen.anonymized is not None
    assert seen.anonymized.tolist() == [False] * n + [True] * n
    out = seen.out
    offsets = ctx.model.offsets(batch.modality).detach()
    assert torch.equal(out.corrected[:n], out.pooled[:n])
    assert torch.allclose(out.corrected[n:], out.pooled[n:] - offsets, atol=1e-6)


def test_without_offsets_no_view_is_corrected(wiring_cfg: DictConfig, batch: Batch) -> None:
    ctx = make_context(wiring_cfg, NUM_CLASSES, ppa="kpr")
    _, terms, seen = run_step(ctx, batch)
    assert set(terms) == {"id", "triplet", "kpr"}
    assert not ctx.objective.offsets
    assert seen.anonymized is None or not seen.anonymized.any()
    assert torch.equal(seen.out.corrected, seen.out.pooled)


def test_baseline_forwards_the_raw_view_only(wiring_cfg: DictConfig, batch: Batch) -> None:
    ctx = make_context(wiring_cfg, NUM_CLASSES, ppa="baseline")
    _, terms, seen = run_step(ctx, batch)
    assert set(terms) == {"id", "triplet"}
    assert seen.out.pooled.shape[0] == len(batch)


def test_total_is_the_configured_weighted_sum(wiring_cfg: DictConfig, batch: Batch) -> None:
    weights = {"id": 0.3, "triplet": 0.7, "kpr": 1.3, "dc": 1.7, "align": 2.9, "proto": 0.6}
    ctx = make_context(wiring_cfg, NUM_CLASSES, weights=weights)
    total, terms, seen = run_step(ctx, batch)
    n = len(batch)
    out = seen.out
    labels = batch.labels.repeat(2)
    modality = batch.modality.repeat(2)
    offsets = ctx.model.offsets(batch.modality).detach()
    # Each term recomputed from the captured forward.
    by_hand = {
        "id": losses.identity_loss(out.logits.detach(), labels, 0.1),
        "triplet": losses.weighted_triplet_loss(out.corrected.detach(), labels),
        "kpr": None,  # checked against the hook-free recomputation in its own test
        "dc": (out.pooled[n:] - out.pooled[:n] - offsets).detach().pow(2).mean(),
        "align": losses.align_loss(
            out.neck.detach(), labels, modality, ctx.prototypes.means, ctx.prototypes.valid
        ),
        "proto": losses.align_loss(
            out.neck.detach(),
            labels,
            modality,
            ctx.prototypes.means,
            ctx.prototypes.valid,
            same_modality=True,
        ),
    }
    assert set(terms) == set(TERMS)
    for key, value in by_hand.items():
        if value is not None:
            assert terms[key] == pytest.approx(float(value), rel=1e-5), key
    expected = sum(weights[k] * terms[k] for k in TERMS)
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)


def test_kpr_pools_the_configured_joints(wiring_cfg: DictConfig, batch: Batch) -> None:
    body = make_context(wiring_cfg, NUM_CLASSES, weights={"kpr": 1.0})
    _, _, seen = run_step(body, batch)
    assert seen.out.parts.shape[1] == 12
    every = make_context(wiring_cfg, NUM_CLASSES, weights={"kpr": 1.0})
    every.objective = replace(every.objective, kpr_joints=tuple(range(17)))
    _, _, seen = run_step(every, batch)
    assert seen.out.parts.shape[1] == 17


@pytest.mark.parametrize("views", ["both", "raw", "corrected"])
def test_prototypes_accumulate_the_configured_views(
    wiring_cfg: DictConfig, batch: Batch, views: str
) -> None:
    """Prototypes are BNNeck features of the views `ppa.prototype_views` names: f of the raw
    view and / or the corrected g of the anonymised one (the two features retrieval
    compares at test time)."""
    ctx = make_context(wiring_cfg, NUM_CLASSES)
    ctx.objective = replace(ctx.objective, prototype_views=views)
    ctx.accumulator = PrototypeAccumulator(2, NUM_CLASSES, ctx.model.num_features)
    _, _, seen = run_step(ctx, batch)
    n = len(batch)
    neck = seen.out.neck.detach()
    offsets = ctx.model.offsets(batch.modality).detach()
    # The anonymised rows' neck input is the corrected feature.
    assert torch.allclose(seen.out.corrected[n:], seen.out.pooled[n:] - offsets, atol=1e-6)
    labels, modality = batch.labels.repeat(2), batch.modality.repeat(2)
    view = torch.arange(2 * n) >= n  # True on the anonymised rows
    taken = {"both": torch.ones(2 * n, dtype=torch.bool), "raw": ~view, "corrected": view}[views]
    for m in (0, 1):
        for label in batch.labels.unique().tolist():
            rows = (modality == m) & (labels == label) & taken
            assert ctx.accumulator.counts[m, label] == rows.sum()
            if rows.any():
                assert torch.allclose(ctx.accumulator.sums[m, label], neck[rows].sum(0), atol=1e-5)


def test_prototype_views_are_checked() -> None:
    with pytest.raises(ValueError, match=r"prototype_views must be one of both, raw, corrected"):
        PPAObjective(anonymized_view=True, offsets=True, weights={}, prototype_views="anon")
    with pytest.raises(ValueError, match="corrected needs the anonymised view and the offsets"):
        PPAObjective(anonymized_view=True, offsets=False, weights={}, prototype_views="corrected")
    read = PPAObjective.from_config(load_config(["ppa=full", "ppa.prototype_views=raw"]).ppa)
    assert read.prototype_views == "raw"


def trained_anonymiser_context(
    cfg: DictConfig, num_classes: int, anonymizer: str, *own_weights: str
) -> StepContext:
    """`ppa=anon_only` with a trainable anonymiser and its optimiser (plain SGD)."""
    cfg = load_config(
        [*cfg_overrides(cfg), "ppa=anon_only", f"anonymizer={anonymizer}", *own_weights]
    )
    torch.manual_seed(0)
    kpr = KprAnonymizer.from_config(cfg)
    return StepContext.from_config(
        cfg,
        model=create_model(cfg.model, num_classes),
        objective=PPAObjective.from_config(cfg.ppa),
        anonymizer=kpr,
        device=DeviceSettings.from_config(cfg),
        anonymizer_optimizer=torch.optim.SGD(kpr.parameters(), lr=0.1),
    )


def keyed(batch: Batch) -> Batch:
    keys = NoiseKeys(bytes(range(32))).tensor([f"img{i}.jpg" for i in batch.indices.tolist()])
    return replace(batch, noise_keys=keys)


# Each anonymiser's own objective switched off, so only the re-id loss could reach it.
SILENT = {
    "secure_reid": [
        f"anonymizer.generator.{w}_weight=0" for w in ("anonymization", "recovery", "wrong_key")
    ],
    "learned": ["anonymizer.generator.privacy_weight=0", "anonymizer.generator.structure_weight=0"],
}


@pytest.mark.parametrize(("anonymizer", "joint"), [("secure_reid", True), ("learned", False)])
def test_the_reid_loss_reaches_only_a_jointly_trained_anonymiser(
    wiring_cfg: DictConfig, batch: Batch, anonymizer: str, joint: bool
) -> None:
    num_classes = int(batch.labels.max()) + 1
    ctx = trained_anonymiser_context(wiring_cfg, num_classes, anonymizer, *SILENT[anonymizer])
    total, terms = ppa_step(ctx, keyed(batch))
    assert terms["anonymizer_total"] == 0.0
    torch.testing.assert_close(float(total), terms["id"] + terms["triplet"], rtol=1e-5, atol=0)
    total.backward()
    grads = [p.grad for p in ctx.anonymizer.parameters()]
    reached = any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert reached is joint


@pytest.mark.parametrize("anonymizer", ["secure_reid", "learned"])
def test_the_step_adds_the_anonymisers_own_objective(
    wiring_cfg: DictConfig, batch: Batch, anonymizer: str
) -> None:
    num_classes = int(batch.labels.max()) + 1
    ctx = trained_anonymiser_context(wiring_cfg, num_classes, anonymizer)
    total, terms = ppa_step(ctx, keyed(batch))
    assert terms["anonymizer_total"] > 0
    expected = terms["id"] + terms["triplet"] + terms["anonymizer_total"]
    torch.testing.assert_close(float(total), expected, rtol=1e-5, atol=0)


def test_one_training_pass_steps_the_model_and_the_anonymiser(
    wiring_cfg: DictConfig, batch: Batch
) -> None:
    num_classes = int(batch.labels.max()) + 1
    ctx = trained_anonymiser_context(wiring_cfg, num_classes, "secure_reid")
    model_before = [p.detach().clone() for p in ctx.model.parameters()]
    anon_before = [p.detach().clone() for p in ctx.anonymizer.parameters()]
    optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.1)
    metrics = train_one_epoch(ctx, [keyed(batch)], optimizer, progress=False)
    assert metrics["batches"] == 1.0 and metrics["loss_anonymizer_recovery"] > 0
    anon_after, model_after = list(ctx.anonymizer.parameters()), list(ctx.model.parameters())
    # every encoder and decoder weight got a step, and the model moved
    assert all(not torch.equal(a, b) for a, b in zip(anon_before, anon_after, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(model_before, model_after, strict=True))


def test_smoothing_and_temperature_come_from_the_objective(
    wiring_cfg: DictConfig, batch: Batch
) -> None:
    """Not the loss functions' defaults: the objective's label smoothing and L_align
    temperature reach the terms."""
    ctx = make_context(wiring_cfg, NUM_CLASSES, weights={"id": 1.0, "align": 1.0})
    ctx.objective = replace(ctx.objective, label_smoothing=0.35, align_temperature=0.2)
    with torch.no_grad():  # confident logits, where the smoothing changes the loss
        for param in ctx.model.classifier.parameters():
            param.mul_(300.0)
    _, terms, seen = run_step(ctx, batch)
    out, labels, modality = seen.out, batch.labels.repeat(2), batch.modality.repeat(2)
    smoothed = losses.identity_loss(out.logits.detach(), labels, 0.35)
    assert terms["id"] == pytest.approx(float(smoothed), rel=1e-5)
    assert terms["id"] != pytest.approx(
        float(losses.identity_loss(out.logits.detach(), labels, 0.1)), rel=1e-3
    )
    softmax = losses.align_loss(
        out.neck.detach(), labels, modality, ctx.prototypes.means, ctx.prototypes.valid, 0.2
    )
    assert terms["align"] == pytest.approx(float(softmax), rel=1e-5)


def test_central_training_moves_the_prototypes_by_their_ema(
    wiring_cfg: DictConfig, batch: Batch
) -> None:
    ctx = make_context(wiring_cfg, NUM_CLASSES)
    ctx.prototype_momentum = 0.75
    before = IdentityPrototypes(ctx.prototypes.means.clone(), ctx.prototypes.valid.clone())
    _, _, seen = run_step(ctx, batch)
    expected = IdentityPrototypes(before.means.clone(), before.valid.clone())
    expected.ema_update(
        seen.out.neck.detach().float(), batch.labels.repeat(2), batch.modality.repeat(2), 0.75
    )
    assert not torch.equal(ctx.prototypes.means, before.means)
    torch.testing.assert_close(ctx.prototypes.means, expected.means)


def test_a_keyed_anonymiser_gets_the_batch_keys(wiring_cfg: DictConfig, batch: Batch) -> None:
    cfg = load_config([*cfg_overrides(wiring_cfg), "ppa=anon_only", "anonymizer=noise"])
    ctx = make_context(wiring_cfg, NUM_CLASSES, ppa="anon_only")
    ctx.anonymizer = KprAnonymizer.from_config(cfg)
    with_keys = keyed(batch)
    inputs = step_inputs(ctx, with_keys)
    expected = ctx.anonymizer(with_keys.images, with_keys.keypoints, with_keys.noise_keys).images
    n = len(batch)
    anonymised = inputs.images[n:]
    by_hand = normalize(expected, ctx.mean, ctx.std)
    torch.testing.assert_close(anonymised, by_hand)
    assert inputs.nviews == 2 and inputs.n == n and inputs.anonymizer_terms == {}


def test_the_context_takes_its_batch_rewrite_from_the_config(wiring_cfg: DictConfig) -> None:
    cfg = load_config([*cfg_overrides(wiring_cfg), "train.pseudo_infrared.fraction=0.5"])
    made = StepContext.from_config(cfg, model=None, objective=None, anonymizer=None, device=None)
    assert made.batch_views is not None
    own = StepContext.from_config(
        cfg, model=None, objective=None, anonymizer=None, device=None, batch_views=None
    )
    assert own.batch_views is None


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"align": 1.0}, True),
        ({"proto": 0.5}, True),
        ({"align": 0.0, "proto": 0.0, "id": 1.0, "triplet": 1.0, "kpr": 1.0, "dc": 1.0}, False),
        ({}, False),
    ],
)
def test_only_the_prototype_terms_need_the_prototypes(weights, expected) -> None:
    objective = PPAObjective(anonymized_view=True, offsets=True, weights=weights)
    assert objective.uses_prototypes() is expected


def test_objective_from_config_reads_every_setting_and_defaults_the_rest() -> None:
    from omegaconf import OmegaConf

    from ppa.pose.joint_sets import ALL_JOINTS, joint_indices

    minimal = OmegaConf.create(
        {
            "name": "mine",
            "anonymized_view": True,
            "offsets": False,
            "weights": {"id": 1.0, "kpr": 0.5},
            "label_smoothing": 0.2,
        }
    )
    objective = PPAObjective.from_config(minimal)
    assert objective.weights == {
        "id": 1.0,
        "triplet": 0.0,
        "kpr": 0.5,
        "dc": 0.0,
        "align": 0.0,
        "proto": 0.0,
    }
    assert objective.label_smoothing == 0.2
    assert objective.align_temperature is None
    assert objective.kpr_joints == ALL_JOINTS
    assert not objective.uses("triplet") and not objective.uses("unknown")
    assert objective.uses("kpr")

    full = OmegaConf.merge(minimal, {"align_temperature": 0.07, "kpr_joints": "body"})
    objective = PPAObjective.from_config(full)
    assert objective.align_temperature == 0.07
    assert objective.kpr_joints == joint_indices("body") != ALL_JOINTS

    raw_only = OmegaConf.merge(minimal, {"anonymized_view": False})
    with pytest.raises(
        ValueError, match=r"^ppa=mine: the kpr/dc losses need anonymized_view=true$"
    ):
        PPAObjective.from_config(raw_only)


def test_a_channels_last_step_matches_the_contiguous_step(
    wiring_cfg: DictConfig, batch: Batch
) -> None:
    """`train.channels_last` (the demo's CPU setting) changes the memory layout only: the
    same step gives the same loss terms and gradients, and the trunk really ran channels-last."""
    plain = make_context(wiring_cfg, NUM_CLASSES)
    fast = make_context(wiring_cfg, NUM_CLASSES)
    fast = replace(fast, device=replace(fast.device, channels_last=True))
    fast.device.place(fast.model)
    total, terms, _ = run_step(plain, batch)
    fast_total, fast_terms, seen = run_step(fast, batch)
    assert seen.feature_map.is_contiguous(memory_format=torch.channels_last)
    assert not seen.feature_map.is_contiguous()
    assert fast_terms.keys() == terms.keys()
    for name, value in terms.items():
        assert fast_terms[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    torch.testing.assert_close(fast_total, total, rtol=1e-4, atol=1e-6)
    for (name, p), q in zip(plain.model.named_parameters(), fast.model.parameters(), strict=True):
        if p.grad is None:
            assert q.grad is None, name
            continue
        # Convolutions sum in another order channels-last: compare against the tensor's scale.
        scale = float(p.grad.abs().max())
        assert float((q.grad - p.grad).abs().max()) <= 1e-4 * scale + 1e-7, name


def test_the_identity_loss_takes_the_site_class_logit_factors(
    wiring_cfg: DictConfig, batch: Batch
) -> None:
    """With a site's restricted softmax the identity term is the loss of the scaled logits,
    and at factor 0 the classifier rows of the identities outside the batch do not move."""
    ctx = make_context(wiring_cfg, NUM_CLASSES, weights={"id": 1.0})
    held = sorted(set(batch.labels.tolist()))
    ctx.class_logit_scale = absent_class_logit_scale(held, NUM_CLASSES, 0.0)
    _, terms, seen = run_step(ctx, batch)
    labels = batch.labels.repeat(2)
    scaled = seen.out.logits.detach() * ctx.class_logit_scale
    assert terms["id"] == pytest.approx(float(losses.identity_loss(scaled, labels, 0.1)), rel=1e-5)
    grad = ctx.model.classifier.weight.grad
    absent = [c for c in range(NUM_CLASSES) if c not in held]
    assert absent and torch.count_nonzero(grad[absent]) == 0
    assert grad[held].abs().sum() > 0
