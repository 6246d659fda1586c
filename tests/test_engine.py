"""Local PPA training pass and feature extraction on a tiny synthetic SYSU set."""

from __future__ import annotations

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from ppa.anonymize import KprAnonymizer
from ppa.config import load_config
from ppa.data.keypoints import load_dataset_keypoints
from ppa.data.loader import create_eval_loader, create_train_loader
from ppa.data.protocols import load_train_set
from ppa.device import DeviceSettings
from ppa.eval.features import extract_features
from ppa.model import create_model
from ppa.prototypes import IdentityPrototypes
from ppa.training.loop import federated_train_config, round_lr_factor, train_one_epoch
from ppa.training.objective import PPAObjective
from ppa.training.optim import create_optimizer, lr_factor, set_epoch_lr
from ppa.training.step import StepContext


def test_lr_schedule_by_hand() -> None:
    assert lr_factor(0, 4, [10, 20], 0.1) == pytest.approx(0.25)
    assert lr_factor(3, 4, [10, 20], 0.1) == pytest.approx(1.0)
    assert lr_factor(9, 4, [10, 20], 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 4, [10, 20], 0.1) == pytest.approx(0.1)
    assert lr_factor(25, 4, [10, 20], 0.1) == pytest.approx(0.01)
    assert lr_factor(0, 0, [], 0.1) == 1.0


def test_a_rounds_learning_rate_factor_is_the_mean_over_its_local_epochs() -> None:
    """Round r of L local epochs spans global epochs (r-1)L .. rL-1 of the schedule."""
    train = OmegaConf.create({"warmup_epochs": 2, "lr_steps": [5], "lr_gamma": 0.1})
    assert round_lr_factor(1, 2, train) == pytest.approx((0.5 + 1.0) / 2)
    assert round_lr_factor(2, 2, train) == pytest.approx(1.0)
    assert round_lr_factor(3, 2, train) == pytest.approx((1.0 + 0.1) / 2)  # epochs 4, 5
    assert round_lr_factor(4, 2, train) == pytest.approx(0.1)
    assert round_lr_factor(5, 1, train) == pytest.approx(1.0)  # epoch 4
    assert round_lr_factor(6, 1, train) == pytest.approx(0.1)


def test_the_federation_can_decay_its_sites_learning_rate_by_its_own_factor() -> None:
    """federation.lr_gamma replaces train.lr_gamma in the sites' schedule; null keeps it, and
    the config itself (what centralised training reads) is left alone."""
    base = ["train.warmup_epochs=0", "train.lr_steps=[4]", "federation.local_epochs=2"]
    cfg = load_config([*base, "federation.lr_gamma=0.3"])
    site = federated_train_config(cfg)
    assert [round_lr_factor(r, 2, site.train) for r in (1, 2, 3, 4)] == pytest.approx(
        [1.0, 1.0, 0.3, 0.3]
    )
    assert cfg.train.lr_gamma == pytest.approx(0.1)
    plain = load_config(base)
    assert federated_train_config(plain) is plain
    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(ValueError, match=r"federation\.lr_gamma"):
            federated_train_config(load_config([*base, f"federation.lr_gamma={bad}"]))


def test_the_federation_steps_its_sites_learning_rate_at_fractions_of_its_run() -> None:
    """federation.lr_step_fractions replaces train.lr_steps in the sites' schedule with steps
    at those fractions of the run's global epochs (rounds x local epochs, rounded, sorted), so
    the step follows the run's length; null keeps train.lr_steps; centralised training's config
    is left alone."""
    base = ["train.warmup_epochs=0", "train.lr_steps=[4]", "federation.local_epochs=1"]
    cfg = load_config([*base, "federation.rounds=8", "federation.lr_step_fractions=[0.75,0.5]"])
    site = federated_train_config(cfg)
    assert list(site.train.lr_steps) == [4, 6]
    assert [round_lr_factor(r, 1, site.train) for r in (4, 5, 6, 7)] == pytest.approx(
        [1.0, 0.1, 0.1, 0.01]
    )
    assert list(cfg.train.lr_steps) == [4]
    # 7/8 of 32 epochs is 28, of 16 rounds of 1 epoch 14, of 8 rounds of 2 epochs 14
    for rounds, local, step in ((32, 1, 28), (16, 1, 14), (8, 2, 14)):
        run = [f"federation.rounds={rounds}", f"federation.local_epochs={local}"]
        fed = federated_train_config(load_config([*run, "federation.lr_step_fractions=[0.875]"]))
        assert list(fed.train.lr_steps) == [step]
    plain = federated_train_config(load_config([*base, "federation.rounds=8"]))
    assert list(plain.train.lr_steps) == [4]
    # the demo recipe: the sites at 7/8 of its 32 rounds (or of 16), centralised at 24
    demo = load_config(["experiment=demo"])
    assert list(federated_train_config(demo).train.lr_steps) == [28]
    short = federated_train_config(load_config(["experiment=demo", "federation.rounds=16"]))
    assert list(short.train.lr_steps) == [14] and list(demo.train.lr_steps) == [24]
    for bad in ("0.5", "[0]", "[1.5]", "[true]", "[-0.1]"):
        with pytest.raises(ValueError, match=r"federation\.lr_step_fractions"):
            federated_train_config(load_config([*base, f"federation.lr_step_fractions={bad}"]))


def test_the_federation_can_warm_its_sites_up_over_its_own_number_of_epochs() -> None:
    """federation.warmup_epochs replaces train.warmup_epochs in the sites' schedule (counted in
    global epochs across rounds); null keeps it, and the config centralised training reads is
    left alone."""
    base = ["train.warmup_epochs=1", "train.lr_steps=[6]", "federation.local_epochs=1"]
    cfg = load_config([*base, "federation.warmup_epochs=3"])
    site = federated_train_config(cfg)
    assert [round_lr_factor(r, 1, site.train) for r in (1, 2, 3, 4, 7)] == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 1.0, 0.1]
    )
    # two local epochs a round: round 1 spans epochs 0-1, round 2 epochs 2-3
    assert round_lr_factor(1, 2, site.train) == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert round_lr_factor(2, 2, site.train) == pytest.approx(1.0)
    assert cfg.train.warmup_epochs == 1
    plain = federated_train_config(load_config(base))
    assert round_lr_factor(1, 1, plain.train) == pytest.approx(1.0)
    for bad in ("-1", "1.5", "true"):
        with pytest.raises(ValueError, match=r"federation\.warmup_epochs"):
            federated_train_config(load_config([*base, f"federation.warmup_epochs={bad}"]))


def test_the_federation_can_train_at_its_own_precision() -> None:
    """federation.amp replaces train.amp in the federation's config (sites and central
    evaluation); centralised training of the same config keeps train.amp."""
    cfg = load_config(["device=cpu", "federation.amp=true"])
    site = federated_train_config(cfg)
    assert site.train.amp is True and cfg.train.amp == "auto"
    assert DeviceSettings.from_config(site).amp_dtype == torch.bfloat16
    assert DeviceSettings.from_config(cfg).amp_dtype is None
    demo = load_config(["experiment=demo"])
    assert demo.train.amp == "auto" and federated_train_config(demo).train.amp == "native"
    with pytest.raises(ValueError, match=r"federation\.amp='bf16'"):
        federated_train_config(load_config(["federation.amp=bf16"]))


def test_optimizer_splits_backbone_and_head(tiny_cfg: DictConfig) -> None:
    model = create_model(tiny_cfg.model, 5)
    opt = create_optimizer(model, tiny_cfg.train.optimizer)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(0.01)
    assert groups["head"]["lr"] == pytest.approx(0.1)
    head = {id(p) for p in groups["head"]["params"]}
    assert id(model.offsets.visible) in head and id(model.classifier.weight) in head
    assert id(model.stems["visible"].conv1.weight) not in head
    assert opt.defaults["nesterov"] is True
    set_epoch_lr(opt, 0, load_config(["train.warmup_epochs=4"]).train)
    assert groups["head"]["lr"] == pytest.approx(0.025)


def test_objective_rejects_inconsistent_ladder_config() -> None:
    cfg = load_config(["ppa=baseline", "ppa.weights.kpr=1.0"])
    with pytest.raises(ValueError, match="anonymized_view"):
        PPAObjective.from_config(cfg.ppa)


def _context(cfg: DictConfig, num_classes: int) -> tuple[StepContext, torch.optim.Optimizer]:
    torch.manual_seed(0)
    device = DeviceSettings.from_config(cfg)
    model = create_model(cfg.model, num_classes)
    ctx = StepContext(
        model=model,
        objective=PPAObjective.from_config(cfg.ppa),
        anonymizer=KprAnonymizer.from_config(cfg),
        mean=tuple(cfg.input.mean),
        std=tuple(cfg.input.std),
        heatmap_sigma=float(cfg.pose.heatmap_sigma),
        min_confidence=float(cfg.pose.min_confidence),
        device=device,
        prototypes=IdentityPrototypes.empty(2, num_classes, model.num_features),
        prototype_momentum=0.9,
    )
    return ctx, create_optimizer(model, cfg.train.optimizer)


@pytest.mark.slow
def test_two_epochs_lower_the_loss(tiny_cfg: DictConfig) -> None:
    train_set = load_train_set(tiny_cfg.dataset)
    keypoints = load_dataset_keypoints(train_set.root)
    loader = create_train_loader(
        train_set.records,
        train_set.root,
        input_cfg=tiny_cfg.input,
        train_cfg=tiny_cfg.train,
        pose_cfg=tiny_cfg.pose,
        keypoints=keypoints,
        seed=0,
    )
    ctx, opt = _context(tiny_cfg, train_set.num_classes)
    losses = []
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        metrics = train_one_epoch(ctx, loader, opt, progress=False)
        losses.append(metrics["loss"])
        for term in ("loss_id", "loss_triplet", "loss_kpr", "loss_dc"):
            assert term in metrics
        assert metrics["num_examples"] > 0
    assert losses[1] < losses[0]
    # The EMA prototypes now hold both modalities of the trained identities.
    assert ctx.prototypes.valid[0].any() and ctx.prototypes.valid[1].any()


def test_feature_views_and_offset_correction(tiny_cfg: DictConfig) -> None:
    train_set = load_train_set(tiny_cfg.dataset)
    keypoints = load_dataset_keypoints(train_set.root)
    records = train_set.records[:10]
    loader = create_eval_loader(
        records,
        train_set.root,
        input_cfg=tiny_cfg.input,
        batch_size=4,
        num_workers=0,
        pose_cfg=tiny_cfg.pose,
        keypoints=keypoints,
    )
    ctx, _ = _context(tiny_cfg, train_set.num_classes)
    with torch.no_grad():
        ctx.model.offsets.visible.fill_(1.0)
        ctx.model.offsets.infrared.fill_(1.0)
    kwargs = dict(
        device=ctx.device, mean=ctx.mean, std=ctx.std, anonymizer=ctx.anonymizer, progress=False
    )
    feats = extract_features(ctx.model, loader, views=("raw", "anon"), **kwargs)
    uncorrected = extract_features(
        ctx.model, loader, views=("anon",), correct_offsets=False, **kwargs
    )
    assert feats["raw"].features.shape == (10, ctx.model.num_features)
    assert torch.equal(feats["raw"].pids, torch.tensor([r.pid for r in records]))
    assert not torch.allclose(feats["raw"].features, feats["anon"].features)
    assert not torch.allclose(feats["anon"].features, uncorrected["anon"].features)
    with pytest.raises(ValueError, match="anonymizer"):
        extract_features(
            ctx.model, loader, views=("anon",), device=ctx.device, mean=ctx.mean, std=ctx.std
        )
