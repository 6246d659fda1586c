"""Per-site DP-SGD (ppa/dp): accounting, per-record clipping, noise, Poisson sampling, the
GroupNorm model, checkpoints and private prototypes, on a tiny model with hand-checked numbers."""

from __future__ import annotations

import math
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from opacus.accountants import PRVAccountant, RDPAccountant
from torch import nn

from ppa.anonymize import KprAnonymizer
from ppa.checkpoint import model_from_checkpoint, save_checkpoint
from ppa.config import load_config
from ppa.data.keypoints import load_dataset_keypoints
from ppa.data.loader import Batch, ReidImageDataset, collate
from ppa.data.protocols import load_train_set
from ppa.data.transforms import build_eval_transform
from ppa.device import DeviceSettings
from ppa.dp import (
    PROTOTYPES,
    SGD,
    ClipGroups,
    LedgerError,
    PerSampleGradients,
    PoissonBatchSampler,
    PrivacyBudgetExhaustedError,
    PrivacyConfigError,
    PrivacyLedger,
    PrivacySettings,
    PrivateModelError,
    PrivateStep,
    Release,
    add_gaussian_noise,
    clip_and_sum,
    clip_rows,
    collate_or_empty,
    create_poisson_loader,
    epsilon_of,
    freeze_other_modalities,
    per_record_losses,
    plan_round,
    release_noise_multiplier,
)
from ppa.model import create_model
from ppa.model.encoder import OutOfPlace
from ppa.prototypes import IdentityPrototypes
from ppa.training.loop import train_one_epoch
from ppa.training.objective import PPAObjective
from ppa.training.optim import create_optimizer
from ppa.training.step import StepContext

from conftest import tiny_overrides

DELTA = 1e-5


@pytest.fixture
def dp_cfg(tiny_sysu_root: Path, tmp_path: Path) -> DictConfig:
    return load_config(
        tiny_overrides(tiny_sysu_root, tmp_path, "privacy=dp", "privacy.secret_seed=7")
    )


# Accounting ----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # opacus PRV at rate 1
def test_ledger_epsilon_equals_opacus_accountants_stepped_by_hand() -> None:
    releases = [
        Release(SGD, 1, 1.1, 0.05, 40),
        Release(PROTOTYPES, 1, release_noise_multiplier(10.0), 1.0, 1),
        Release(SGD, 2, 1.1, 0.05, 40),
        Release(PROTOTYPES, 2, release_noise_multiplier(10.0), 1.0, 1),
        Release(SGD, 3, 0.8, 0.04, 25),
    ]
    ledger = PrivacyLedger(accountant="rdp")
    rdp, prv = RDPAccountant(), PRVAccountant()
    previous = 0.0
    for release in releases:
        ledger.record([release])
        for acc in (rdp, prv):
            for _ in range(release.steps):
                acc.step(noise_multiplier=release.noise, sample_rate=release.rate)
        eps = ledger.epsilon(DELTA)
        assert eps == pytest.approx(rdp.get_epsilon(DELTA), rel=1e-12)
        assert eps > previous  # every release spends
        previous = eps
    assert epsilon_of(ledger.releases, DELTA, "prv") == pytest.approx(
        prv.get_epsilon(DELTA), rel=1e-9
    )
    assert PrivacyLedger().epsilon(DELTA) == 0.0


def test_prototype_release_is_a_gaussian_mechanism_of_sensitivity_sqrt2() -> None:
    # One release at rate 1: RDP of order a is a / (2 z^2) with z = sigma / sqrt(2).
    sigma = 10.0
    z = release_noise_multiplier(sigma)
    assert z == pytest.approx(sigma / math.sqrt(2))
    acc = RDPAccountant()
    acc.history = [(z, 1.0, 1)]
    eps, alpha = acc.get_privacy_spent(delta=DELTA)
    by_hand = (
        alpha / (2 * z**2)
        + math.log((alpha - 1) / alpha)
        - (math.log(DELTA) + math.log(alpha)) / (alpha - 1)
    )
    assert eps == pytest.approx(by_hand, rel=1e-9)


def test_ledger_round_trips_through_columns_and_rejects_bad_ones() -> None:
    ledger = PrivacyLedger(plan_round(_settings(), 3, sample_rate=0.1, steps=20, prototypes=True))
    columns = ledger.to_columns()
    assert columns["kind"] == [SGD, PROTOTYPES] and columns["steps"] == [20, 1]
    again = PrivacyLedger.from_columns(columns)
    assert again.releases == ledger.releases
    assert again.epsilon(DELTA) == ledger.epsilon(DELTA)
    with pytest.raises(LedgerError, match="different lengths"):
        PrivacyLedger.from_columns({**columns, "steps": [20]}, source="site cam1 ledger")
    with pytest.raises(LedgerError, match="missing columns"):
        PrivacyLedger.from_columns({"kind": []})
    with pytest.raises(LedgerError, match="rate"):
        Release(SGD, 1, 1.0, 1.5, 1)


def _settings(**over) -> PrivacySettings:
    values = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": DELTA, "batch_size": 8}
    values.update(over)
    return PrivacySettings(**values)


def test_budget_check_refuses_the_round_that_would_overspend() -> None:
    settings = _settings(epsilon_budget=5.0, site_budgets={"cam3": 1.0})
    plan = plan_round(settings, 1, sample_rate=0.1, steps=10, prototypes=True)
    ledger = PrivacyLedger()
    one_round = ledger.epsilon(DELTA, plan)
    assert 1.0 < one_round < 5.0
    assert ledger.check_budget("cam1", plan, settings.budget_for("cam1"), DELTA) == one_round
    with pytest.raises(PrivacyBudgetExhaustedError, match=r"site cam3: DP budget exhausted"):
        ledger.check_budget("cam3", plan, settings.budget_for("cam3"), DELTA)
    assert settings.budget_for("cam3") == 1.0 and settings.budget_for("cam9") == 5.0
    assert PrivacyLedger().check_budget("x", plan, math.inf, DELTA) == one_round


def test_settings_validate_and_default_the_batch(dp_cfg: DictConfig) -> None:
    settings = PrivacySettings.from_config(dp_cfg)
    assert settings.batch_size == dp_cfg.train.num_ids * dp_cfg.train.num_instances
    assert settings.secret_seed == 7 and settings.seed(1, "a") == settings.seed(1, "a")
    assert _settings().seed("x") != _settings().seed("x")  # OS entropy without a secret seed
    with pytest.raises(PrivacyConfigError, match=r"privacy\.noise_multiplier"):
        _settings(noise_multiplier=0.0)
    with pytest.raises(PrivacyConfigError, match=r"privacy\.accountant"):
        _settings(accountant="moments")
    with pytest.raises(PrivacyConfigError, match=r"privacy\.site_budgets\.cam2"):
        _settings(site_budgets={"cam2": -1.0})
    assert settings.clip_groups == {}
    grouped = dp_cfg.copy()
    grouped.privacy.clip_groups = {"classifier": 5.0}
    assert PrivacySettings.from_config(grouped).clip_groups == {"classifier": 5.0}
    with pytest.raises(PrivacyConfigError, match=r"privacy\.clip_groups\.neck"):
        _settings(clip_groups={"neck": 0.0})


# The per-sample model ------------------------------------------------------------------------


def test_dp_config_builds_a_group_norm_model_without_in_place_ops(dp_cfg: DictConfig) -> None:
    assert dp_cfg.model.norm == "group" and dp_cfg.ppa.weights.triplet == 0.0
    model = create_model(dp_cfg.model, 5)
    kinds = {type(m) for m in model.modules()}
    assert nn.GroupNorm in kinds
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert all(isinstance(b.drop_path, OutOfPlace) for b in model.trunk.layer1)
    assert model.neck.num_groups == 1 and not model.neck.bias.requires_grad
    assert not any(k.endswith(("running_mean", "running_var")) for k in model.state_dict())
    # Bottleneck blocks (resnet50 family) get the same treatment.
    cfg = load_config(
        [
            "privacy=dp",
            "model=resnet50",
            "model.pretrained=false",
            "+model.arch_kwargs.layers=[1,1,1,1]",
        ]
    ).model
    big = create_model(cfg, 3)
    assert all(isinstance(b.drop_path, OutOfPlace) for b in big.trunk.layer4)
    with pytest.raises(PrivateModelError, match=r"model\.norm=group"):
        PerSampleGradients(create_model(load_config(["model=tiny"]).model, 3))


def test_dp_checkpoint_round_trip(dp_cfg: DictConfig, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(dp_cfg.model, 6)
    with torch.no_grad():
        model.neck.weight.uniform_(0.5, 1.5)
    path = save_checkpoint(tmp_path / "dp.pt", model, dp_cfg, epsilon=3.5)
    loaded, payload = model_from_checkpoint(path)
    assert loaded.norm == "group" and payload["model_config"]["norm"] == "group"
    assert payload["epsilon"] == 3.5
    x, mod = torch.rand(3, 3, 64, 32), torch.tensor([0, 1, 0])
    model.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(x, mod).neck, model(x, mod).neck)


# Per-record gradients and clipping -----------------------------------------------------------


def _batch(cfg: DictConfig, per_modality: dict[int, int]) -> tuple[Batch, int]:
    """The first `count` training images of each modality index, resize-only."""
    train_set = load_train_set(cfg.dataset)
    keypoints = load_dataset_keypoints(train_set.root)
    data = ReidImageDataset(
        train_set.root, train_set.records, build_eval_transform(cfg.input), keypoints=keypoints
    )
    picked = []
    for modality, count in per_modality.items():
        picked += [i for i, r in enumerate(train_set.records) if r.modality.index == modality][
            :count
        ]
    return collate([data[i] for i in picked]), train_set.num_classes


def _context(cfg: DictConfig, model: nn.Module, num_classes: int, protos: bool) -> StepContext:
    prototypes = None
    if protos:
        g = torch.Generator().manual_seed(3)
        prototypes = IdentityPrototypes.from_sums(
            torch.randn(2, num_classes, model.num_features, generator=g), torch.ones(2, num_classes)
        )
    return StepContext(
        model=model,
        objective=PPAObjective.from_config(cfg.ppa),
        anonymizer=KprAnonymizer.from_config(cfg),
        mean=tuple(cfg.input.mean),
        std=tuple(cfg.input.std),
        heatmap_sigma=float(cfg.pose.heatmap_sigma),
        min_confidence=float(cfg.pose.min_confidence),
        device=DeviceSettings.from_config(cfg),
        prototypes=prototypes,
    )


def test_per_record_gradient_is_the_gradient_of_that_record_alone(dp_cfg: DictConfig) -> None:
    # Mixed modalities (central training): stems see subsets of the rows and are scattered
    # back; raw + anonymised views of a record are summed; every loss term is on.
    # L_proto on as well: both prototype pulls are per-record terms.
    cfg = OmegaConf.merge(dp_cfg, {"ppa": {"weights": {"proto": 0.5}}})
    torch.manual_seed(0)
    batch, num_classes = _batch(cfg, {0: 2, 1: 2})
    assert len(set(batch.modality.tolist())) == 2
    model = create_model(cfg.model, num_classes).train()
    grads = PerSampleGradients(model)
    ctx = _context(cfg, model, num_classes, protos=True)
    total, terms, nviews = per_record_losses(ctx, batch)
    assert nviews == 2 and set(terms) == {"id", "kpr", "dc", "align", "proto"}
    grads.backward(total)
    per_record = grads.per_record(len(batch), batch.modality.repeat(nviews))
    grads.reset()
    names = [n for n, _ in grads.params]
    for r in range(len(batch)):
        one = Batch(**{k: getattr(batch, k)[r : r + 1] for k in batch.__dataclass_fields__})
        model.zero_grad(set_to_none=True)
        alone, _, _ = per_record_losses(ctx, one)
        assert float(alone[0].detach()) == pytest.approx(float(total[r].detach()), rel=1e-5)
        grads.backward(alone)
        grads.reset()
        for name, p in grads.params:
            expected = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(
                per_record[name][r], expected, rtol=1e-4, atol=1e-6, msg=f"record {r}, {name}"
            )
    assert len(names) == len(per_record)


def test_clipping_bounds_a_record_scaled_a_thousandfold(dp_cfg: DictConfig) -> None:
    torch.manual_seed(0)
    batch, num_classes = _batch(dp_cfg, {1: 4})
    model = create_model(dp_cfg.model, num_classes).train()
    grads = PerSampleGradients(model)
    ctx = _context(dp_cfg, model, num_classes, protos=False)

    def summed_clipped(b: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        model.zero_grad(set_to_none=True)
        total, _, nviews = per_record_losses(ctx, b)
        grads.backward(total)
        per_record = grads.per_record(len(b), b.modality.repeat(nviews))
        grads.reset()
        return clip_and_sum(per_record, max_norm)

    def norm(tensors: dict[str, torch.Tensor]) -> float:
        return float(torch.sqrt(sum(t.pow(2).sum() for t in tensors.values())))

    max_norm = 0.5
    clean, _ = summed_clipped(batch)
    loud = Batch(**{k: getattr(batch, k).clone() for k in batch.__dataclass_fields__})
    loud.images[2] *= 1000.0
    noisy, loud_norms = summed_clipped(loud)
    assert float(loud_norms[2]) > 50 * max_norm  # the record really is an outlier
    assert norm(noisy) <= len(batch) * max_norm + 1e-4
    # Only record 2 changed: the two sums differ by at most the two clipped versions of it.
    diff = {k: noisy[k] - clean[k] for k in clean}
    assert norm(diff) <= 2 * max_norm + 1e-4
    # Without record 2 at all: its clipped contribution alone has norm <= C.
    keep = [0, 1, 3]
    rest = Batch(**{k: getattr(loud, k)[keep] for k in loud.__dataclass_fields__})
    without, _ = summed_clipped(rest)
    assert norm({k: noisy[k] - without[k] for k in noisy}) <= max_norm + 1e-4


def test_group_clipping_by_hand() -> None:
    # Two records, three parameters: "head.w" in group "head" (C 1.0), "body.a" and "body.b"
    # in the default group (C 0.5). Record 0: head (3, 4) -> norm 5 -> scaled to (0.6, 0.8);
    # body (0.3, 0.4) -> norm 0.5 -> kept. Record 1: head (0, 0.5) -> kept; body (0, 2) ->
    # norm 2 -> scaled by 1/4.
    per_record = {
        "head.w": torch.tensor([[3.0, 4.0], [0.0, 0.5]]),
        "body.a": torch.tensor([[0.3], [0.0]]),
        "body.b": torch.tensor([[0.4], [2.0]]),
    }
    groups = ClipGroups.build(per_record, 0.5, {"head": 1.0})
    assert groups.count == 2 and groups.clip_of("body.a") == 0.5 and groups.clip_of("head.w") == 1
    summed, norms = clip_and_sum(per_record, groups)
    torch.testing.assert_close(summed["head.w"], torch.tensor([0.6, 1.3]))
    torch.testing.assert_close(summed["body.a"], torch.tensor([0.3]))
    torch.testing.assert_close(summed["body.b"], torch.tensor([0.4 + 0.5]))
    torch.testing.assert_close(norms, torch.tensor([[0.5, 5.0], [2.0, 0.5]]))
    assert groups.scaled_down(norms).tolist() == [True, True]
    # Noise: sigma sqrt(K) C_k per group, so the rescaled mechanism has multiplier sigma.
    assert groups.noise_std("head.w", 1.5) == pytest.approx(1.5 * math.sqrt(2) * 1.0)
    assert groups.noise_std("body.b", 1.5) == pytest.approx(1.5 * math.sqrt(2) * 0.5)
    # One group is plain clipping: the whole gradient to C, noise sigma C.
    whole, whole_norms = clip_and_sum(per_record, 10.0)
    torch.testing.assert_close(whole["head.w"], torch.tensor([3.0, 4.5]))
    assert whole_norms.shape == (2, 1)
    assert ClipGroups.build(per_record, 10.0).noise_std("head.w", 1.5) == pytest.approx(15.0)
    with pytest.raises(ValueError, match=r"privacy\.clip_groups.*\['neck'\]"):
        ClipGroups.build(per_record, 0.5, {"neck": 1.0})


def test_private_step_noise_has_the_configured_std(dp_cfg: DictConfig) -> None:
    # An empty Poisson batch: the step adds noise only, grad = N(0, (sigma C)^2) / (q N).
    model = create_model(dp_cfg.model, 5).train()
    freeze_other_modalities(model, keep=load_train_set(dp_cfg.dataset).records[0].modality)
    grads = PerSampleGradients(model)
    sigma, clip, expected = 1.3, 0.7, 4.0
    step = PrivateStep(
        grads, noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=expected, seed=11
    )
    opt = torch.optim.SGD([p for _, p in grads.params], lr=0.0)
    ctx = _context(dp_cfg, model, 5, protos=False)
    seen: list[torch.Tensor] = []
    original = opt.step

    def capture(*a, **k):
        seen.extend(p.grad.detach().flatten() for _, p in grads.params)
        return original(*a, **k)

    opt.step = capture
    empty = collate_or_empty([], 64, 32)
    loss, terms = step(ctx, empty, opt)
    values = torch.cat(seen)
    assert values.numel() > 50_000 and float(loss) == 0.0 and terms == {}
    assert float(values.std()) == pytest.approx(sigma * clip / expected, rel=0.02)
    assert abs(float(values.mean())) < 0.02 * sigma * clip / expected
    assert step.steps == 1 and step.records == 0
    frozen = [p for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    # With the classifier in a group of its own (C 2.0): sqrt(2) sigma C_k in each group.
    grouped = PrivateStep(
        grads,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=expected,
        seed=12,
        clip_groups={"classifier": 2.0},
    )
    seen.clear()
    grouped(ctx, empty, opt)
    in_head = [name.startswith("classifier") for name, _ in grads.params]
    head = torch.cat([g for h, g in zip(in_head, seen, strict=True) if h])
    body = torch.cat([g for h, g in zip(in_head, seen, strict=True) if not h])
    assert float(head.std()) == pytest.approx(math.sqrt(2) * sigma * 2.0 / expected, rel=0.05)
    assert float(body.std()) == pytest.approx(math.sqrt(2) * sigma * clip / expected, rel=0.02)


# Poisson sampling ----------------------------------------------------------------------------


def test_poisson_sampler_draws_each_record_with_rate_q() -> None:
    sampler = PoissonBatchSampler(200, 0.1, steps=400, seed=5)
    sampler.set_epoch(3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 400
    sizes = np.array([len(b) for b in batches])
    assert sizes.mean() == pytest.approx(20.0, rel=0.03)
    assert sizes.var() == pytest.approx(200 * 0.1 * 0.9, rel=0.15)  # binomial variance
    hits = np.bincount([i for b in batches for i, _ in b], minlength=200)
    assert hits.mean() == pytest.approx(40.0, rel=0.03) and hits.min() > 15
    assert [b[:3] for b in batches[:5]] == [b[:3] for b in list(sampler)[:5]]  # (seed, epoch)
    sampler.set_epoch(4)
    assert next(iter(sampler)) != batches[0]
    tiny = PoissonBatchSampler(3, 0.01, steps=50, seed=0)
    assert any(len(b) == 0 for b in tiny)  # empty batches happen and are kept
    empty = collate_or_empty([], 64, 32)
    assert empty.images.shape == (0, 3, 64, 32) and empty.keypoints.shape == (0, 17, 3)


# Private prototypes --------------------------------------------------------------------------


def test_prototype_noise_has_the_configured_std() -> None:
    clip, sigma = 0.8, 3.0
    sums, counts = torch.zeros(40, 256), torch.full((40,), 5.0)
    gen = torch.Generator().manual_seed(1234)
    noisy_sums, noisy_counts = add_gaussian_noise(
        sums, counts, clip=clip, noise=sigma, generator=gen
    )
    assert float(noisy_sums.std()) == pytest.approx(sigma * clip, rel=0.02)
    assert abs(float(noisy_sums.mean())) < 0.02 * sigma * clip
    big_counts = torch.zeros(20_000)
    _, many = add_gaussian_noise(
        torch.zeros(1, 1), big_counts, clip=clip, noise=sigma, generator=gen
    )
    assert float(many.std()) == pytest.approx(sigma, rel=0.02)
    assert float((noisy_counts - counts).abs().max()) < 5 * sigma


def test_clip_rows_bounds_each_feature() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    y = clip_rows(x, 1.0)
    torch.testing.assert_close(y, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))


# Training ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dp_training_lowers_the_loss(dp_cfg: DictConfig) -> None:
    # DP-SGD at sigma=0.5, C=1 with the privacy=dp recipe (lr_head = lr_backbone = 0.01),
    # Poisson batches of expected size 32 over the 204 images of the tiny set.
    torch.manual_seed(0)
    train_set = load_train_set(dp_cfg.dataset)
    keypoints = load_dataset_keypoints(train_set.root)
    loader = create_poisson_loader(
        train_set.records,
        train_set.root,
        input_cfg=dp_cfg.input,
        train_cfg=dp_cfg.train,
        pose_cfg=dp_cfg.pose,
        keypoints=keypoints,
        expected_batch_size=32,
        seed=0,
    )
    sampler = loader.batch_sampler
    assert sampler.sample_rate == pytest.approx(32 / 204) and sampler.steps == 6
    model = create_model(dp_cfg.model, train_set.num_classes)
    grads = PerSampleGradients(model)
    step = PrivateStep(
        grads,
        noise_multiplier=0.5,
        max_grad_norm=1.0,
        expected_batch_size=sampler.sample_rate * sampler.num_records,
        seed=0,
    )
    ctx = _context(dp_cfg, model, train_set.num_classes, protos=False)
    ctx.private_step = step
    opt = create_optimizer(model, dp_cfg.train.optimizer)
    assert {g["lr"] for g in opt.param_groups} == {0.01}
    losses = []
    for epoch in range(8):
        sampler.set_epoch(epoch)
        losses.append(train_one_epoch(ctx, loader, opt, progress=False)["loss"])
    assert step.steps == 8 * sampler.steps
    assert losses[-1] < losses[0] - 0.08, losses
    assert all(torch.isfinite(p).all() for p in model.parameters())


# Centralised DP-SGD (scripts/train_central.py privacy=dp) -----------------------------------


@pytest.mark.slow
def test_train_central_private_accounts_stops_at_the_budget_and_resumes(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:

    train_central = import_module("ppa.cli.train")
    base = tiny_overrides(
        tiny_sysu_root,
        tmp_path,
        "privacy=dp",
        "privacy.secret_seed=0",
        "privacy.batch_size=32",
        "train.checkpoint_every=0",
    )
    # q = 32/204, 6 steps/epoch; L_align on: one prototype release per epoch.
    q, steps = 32 / 204, 6

    def by_hand(epochs: int) -> float:
        acc = RDPAccountant()
        for _ in range(epochs):
            for _ in range(steps):
                acc.step(noise_multiplier=1.0, sample_rate=q)
            acc.step(noise_multiplier=release_noise_multiplier(10.0), sample_rate=1.0)
        return acc.get_epsilon(DELTA)

    budget = (by_hand(2) + by_hand(3)) / 2  # two epochs fit, the third does not
    cfg = load_config([*base, "train.epochs=2", f"privacy.epsilon_budget={budget}"])
    last = train_central.train(cfg)
    model, payload = model_from_checkpoint(last)
    assert model.norm == "group" and payload["epoch"] == 2
    assert payload["epsilon"] == pytest.approx(by_hand(2), rel=1e-9)
    assert payload["dp_ledger"]["kind"] == ["sgd", "prototypes"] * 2
    assert payload["prototypes"]["valid"].any()  # L_align's targets: the DP release
    # Resumed with the same budget: it stops before epoch 3 (nothing trained, nothing spent).
    stopped = train_central.train(
        load_config(
            [*base, "train.epochs=4", f"checkpoint={last}", f"privacy.epsilon_budget={budget}"]
        )
    )
    _, again = model_from_checkpoint(stopped)
    assert again["epoch"] == 2 and again["epsilon"] == payload["epsilon"]
    # Resumed with more budget: the ledger composes on from the checkpoint.
    resumed = train_central.train(
        load_config([*base, "train.epochs=3", f"checkpoint={last}", "privacy.epsilon_budget=null"])
    )
    _, third = model_from_checkpoint(resumed)
    assert third["epoch"] == 3 and third["epsilon"] == pytest.approx(by_hand(3), rel=1e-9)
    # A budget below one epoch: nothing trains, the error says why.
    with pytest.raises(PrivacyBudgetExhaustedError, match="site central"):
        train_central.train(
            load_config(
                [
                    *base,
                    "train.epochs=1",
                    "privacy.epsilon_budget=0.5",
                    f"output_dir={tmp_path / 'none'}",
                ]
            )
        )
    with pytest.raises(PrivacyConfigError, match="anonymizer=learned"):
        train_central.train(load_config([*base, "anonymizer=learned"]))
    with pytest.raises(PrivacyConfigError, match="anonymizer=secure_reid"):
        train_central.train(load_config([*base, "anonymizer=secure_reid", "ppa=anon_only"]))


def test_private_prototypes_take_the_configured_views() -> None:
    from ppa.dp.prototypes import clipped_sums

    cfg = load_config(["model=tiny", "ppa=full", "ppa.pose_guided=false", "anonymizer=mosaic"])
    torch.manual_seed(0)
    model = create_model(cfg.model, 3)
    n = 6
    batch = Batch(
        images=torch.rand(n, 3, 64, 32),
        keypoints=torch.zeros(n, 17, 3),
        labels=torch.tensor([0, 1, 2, 0, 1, 2]),
        modality=torch.tensor([0, 0, 0, 1, 1, 1]),
        cams=torch.ones(n, dtype=torch.long),
        noise_keys=torch.zeros(n, 0, dtype=torch.uint8),
        indices=torch.arange(n),
    )
    anonymizer = KprAnonymizer.from_config(cfg)
    common = dict(
        num_modalities=2,
        num_classes=3,
        clip=1.0,
        device=DeviceSettings.from_config(cfg),
        mean=tuple(cfg.input.mean),
        std=tuple(cfg.input.std),
    )
    raw, counts, _ = clipped_sums(model, [batch], **common)
    anon, anon_counts, _ = clipped_sums(
        model, [batch], anonymizer=anonymizer, include_raw=False, **common
    )
    both, _, _ = clipped_sums(model, [batch], anonymizer=anonymizer, **common)
    assert torch.equal(counts, anon_counts)  # one count per record whatever the views
    assert not torch.allclose(raw, anon)
    torch.testing.assert_close(both, (raw + anon) / 2)  # the mean of the record's two views
    with pytest.raises(ValueError, match="without the raw view need the anonymiser"):
        clipped_sums(model, [batch], include_raw=False, **common)
