"""Federation settings the method depends on: prototypes on/off, the learned anonymiser, the
statistics-round cadence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.app import train_reply
from client.site import RoundResult, SiteSpec, SiteTrainer
from ppa.cli.evaluate import precision_config
from ppa.config import load_config
from ppa.device import DeviceSettings
from ppa.wire import PROTO_COUNT, PROTO_SUM, check_federated_anonymizer, global_keys, pack
from server.run import FederatedRun

from conftest import tiny_overrides


def _result() -> RoundResult:
    return RoundResult(
        arrays={"w": np.ones(3, np.float32)},
        proto_sum=np.full((4, 2), 2.0, np.float32),
        proto_count=np.array([1.0, 0.0, 2.0, 0.0], np.float32),
        metrics={"num-examples": 5.0},
    )


def test_prototypes_travel_only_when_configured() -> None:
    sent = train_reply(_result(), site="cam1", modality="visible", send_prototypes=True)
    np.testing.assert_array_equal(sent["prototypes"][PROTO_SUM].numpy(), np.full((4, 2), 2.0))
    np.testing.assert_array_equal(sent["prototypes"][PROTO_COUNT].numpy(), [1, 0, 2, 0])
    kept = train_reply(_result(), site="cam1", modality="visible", send_prototypes=False)
    assert "prototypes" not in kept.array_records
    assert set(kept.array_records) == {"arrays"}
    assert kept["site"]["site"] == "cam1" and kept["metrics"]["num-examples"] == 5.0


@pytest.mark.parametrize("name", ["learned", "secure_reid"])
def test_a_trained_anonymiser_is_refused_in_a_federation(
    tiny_sysu_root: Path, tmp_path: Path, name: str
) -> None:
    cfg = load_config(
        tiny_overrides(tiny_sysu_root, tmp_path, f"anonymizer={name}", "ppa=anon_only")
    )
    with pytest.raises(ValueError, match=f"anonymizer={name} is not supported in a federation"):
        check_federated_anonymizer(cfg)
    with pytest.raises(ValueError, match=f"anonymizer={name}"):
        FederatedRun(cfg)
    with pytest.raises(ValueError, match=f"anonymizer={name}"):
        SiteTrainer(cfg, SiteSpec(None, None, None, partition_id=0, num_partitions=6))
    # Pixel anonymisers, and the baseline that never anonymises, are fine.
    check_federated_anonymizer(load_config(["anonymizer=noise"]))
    check_federated_anonymizer(load_config(["anonymizer=learned", "ppa=baseline"]))


def test_statistics_round_cadence_defaults_to_the_evaluation_cadence() -> None:
    assert load_config([]).federation.calibrate_every == 1
    demo = load_config(["experiment=demo"])
    assert demo.federation.calibrate_every == demo.federation.evaluate_every == 8
    own = load_config(["experiment=demo", "federation.calibrate_every=1"])
    assert own.federation.calibrate_every == 1 and own.federation.evaluate_every == 8


@pytest.mark.parametrize(
    "extra",
    [
        ["federation.calibration_mode=eval"],
        ["federation.calibrate_norm_statistics=false"],
        ["model.trunk_stats=shared"],  # auto resolves to eval
    ],
)
def test_training_camera_statistics_need_a_training_mode_statistics_round(
    tiny_sysu_root: Path, tmp_path: Path, extra: list[str]
) -> None:
    """The server keeps per-camera statistics only from a training-mode statistics round: any
    other setting is refused before the run starts, naming the setting."""
    overrides = tiny_overrides(
        tiny_sysu_root, tmp_path, "eval.camera_statistics=training", "model.trunk_stats=modality"
    )
    with pytest.raises(ValueError, match=r"eval\.camera_statistics=training"):
        FederatedRun(load_config([*overrides, *extra]))
    FederatedRun(load_config(overrides))  # training mode: accepted
    # auto (the demo's) is training where it can be and one set per modality where it cannot.
    auto = tiny_overrides(
        tiny_sysu_root, tmp_path, "eval.camera_statistics=auto", "model.trunk_stats=modality"
    )
    given = load_config([*auto, *extra])
    run = FederatedRun(given)
    assert run.cfg.eval.camera_statistics == "none"
    assert run.evaluator.cfg.eval.camera_statistics == "none"
    assert given.eval.camera_statistics == "auto"  # the caller's config is left as it was
    run = FederatedRun(load_config(auto))
    assert run.cfg.eval.camera_statistics == "training"
    assert run.evaluator.cfg.eval.camera_statistics == "training"


@pytest.mark.parametrize("alpha", [None, 0.0])
def test_a_site_with_the_restricted_softmax_leaves_its_absent_identities_rows(
    tiny_sysu_root: Path, tmp_path: Path, alpha: float | None
) -> None:
    """federation.absent_class_logit_scale=0: a round of local training does not move the
    classifier rows of identities the site does not hold (without weight decay nothing else
    does); the plain softmax pushes them away from the site's images."""
    cfg = load_config(
        tiny_overrides(
            tiny_sysu_root,
            tmp_path,
            "train.optimizer.weight_decay=0.0",
            "train.max_batches_per_epoch=2",
            f"federation.absent_class_logit_scale={'null' if alpha is None else alpha}",
        )
    )
    trainer = SiteTrainer(cfg, SiteSpec(None, None, None, partition_id=0, num_partitions=6))
    state = trainer.model.state_dict()
    arrays = {k: v.copy() for k, v in pack(state, global_keys(state)).items()}
    result = trainer.train_round(arrays, None, server_round=1, local_epochs=1, half_precision=False)
    held = sorted(set(trainer.site.labels))
    absent = [c for c in range(trainer.num_classes) if c not in held]
    before, after = arrays["classifier.weight"], result.arrays["classifier.weight"]
    assert absent and not np.array_equal(after[held], before[held])
    if alpha is None:
        assert not np.array_equal(after[absent], before[absent])
    else:
        np.testing.assert_array_equal(after[absent], before[absent])


def _first_round_moves(
    root: Path, out: Path, cases: dict[str, tuple[str, ...]]
) -> dict[str, np.ndarray]:
    """Each case's move of the classifier rows in one local step of round 1 (global epoch 0)
    with plain SGD (no momentum, no weight decay, no warm-up), every case from the same
    weights: the move is lr x the schedule's factor x the gradient."""
    moves: dict[str, np.ndarray] = {}
    arrays = None
    for name, overrides in cases.items():
        cfg = load_config(
            tiny_overrides(
                root,
                out / name,
                "train.optimizer.weight_decay=0.0",
                "train.optimizer.momentum=0.0",
                "train.optimizer.nesterov=false",
                "train.warmup_epochs=0",
                "train.max_batches_per_epoch=1",
                *overrides,
            )
        )
        trainer = SiteTrainer(cfg, SiteSpec(None, None, None, partition_id=0, num_partitions=6))
        if arrays is None:
            state = trainer.model.state_dict()
            arrays = {k: v.copy() for k, v in pack(state, global_keys(state)).items()}
        result = trainer.train_round(
            {k: v.copy() for k, v in arrays.items()},
            None,
            server_round=1,
            local_epochs=1,
            half_precision=False,
        )
        moves[name] = result.arrays["classifier.weight"] - arrays["classifier.weight"]
    return moves


def test_a_site_decays_its_learning_rate_by_the_federations_factor(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    """federation.lr_gamma sets the sites' step decay: one local step after the step epoch
    moves each weight by lr * gamma * gradient, so the same step with gamma 0.5 moves twice as
    far as with 0.25; train.lr_gamma (0.1) is not used."""
    moves = _first_round_moves(
        tiny_sysu_root,
        tmp_path,
        {
            str(gamma): ("train.lr_steps=[0]", f"federation.lr_gamma={gamma}")
            for gamma in (0.5, 0.25)
        },
    )
    assert np.abs(moves["0.25"]).max() > 0
    np.testing.assert_allclose(moves["0.5"], 2 * moves["0.25"], rtol=1e-4, atol=1e-7)


def test_a_site_steps_its_learning_rate_at_the_federations_fraction_of_the_run(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    """federation.lr_step_fractions sets where the sites' rate steps: a site whose
    train.lr_steps=[0] decay 0.1 is moved to 3/4 of a 4-round run by the fraction 0.75 moves
    ten times as far in round 1, and a fraction that rounds to epoch 0 under
    train.lr_steps=[3] as far as the first."""
    run = ("train.lr_gamma=0.1", "federation.rounds=4", "federation.local_epochs=1")
    moves = _first_round_moves(
        tiny_sysu_root,
        tmp_path,
        {
            "train": (*run, "train.lr_steps=[0]"),
            "federation_later": (*run, "train.lr_steps=[0]", "federation.lr_step_fractions=[0.75]"),
            "federation_at_0": (*run, "train.lr_steps=[3]", "federation.lr_step_fractions=[0.1]"),
        },
    )
    assert np.abs(moves["train"]).max() > 0
    np.testing.assert_allclose(moves["federation_later"], 10 * moves["train"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(moves["federation_at_0"], moves["train"], rtol=1e-5, atol=1e-8)


def test_the_server_refuses_a_federation_decay_outside_zero_to_one(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    """federation.lr_gamma is checked when the run starts, before any site trains."""
    with pytest.raises(ValueError, match=r"federation\.lr_gamma=1\.5"):
        FederatedRun(
            load_config(tiny_overrides(tiny_sysu_root, tmp_path, "federation.lr_gamma=1.5"))
        )


def test_the_server_evaluates_at_the_federations_precision(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    """federation.amp reaches the central evaluation, not only the sites."""
    overrides = tiny_overrides(tiny_sysu_root, tmp_path, "device=cpu", "federation.amp=true")
    run = FederatedRun(load_config(overrides))
    assert run.device.amp_dtype == torch.bfloat16
    assert run.evaluator.device.amp_dtype == torch.bfloat16


def test_a_federations_model_is_evaluated_at_its_servers_precision() -> None:
    """ppa-evaluate scores a server checkpoint at its run's federation.amp (so model_latest.pt
    reproduces the run's last central evaluation) and any other checkpoint at train.amp."""
    cfg = load_config(["device=cpu"])
    trained = {"federation": {"amp": True}}
    server = precision_config(cfg, {"config": trained, "server_round": 4})
    assert server.train.amp is True
    assert DeviceSettings.from_config(server).amp_dtype == torch.bfloat16
    central = precision_config(cfg, {"config": trained})
    assert central is cfg and DeviceSettings.from_config(central).amp_dtype is None
    unset = {"config": {"federation": {"amp": None}}, "server_round": 4}
    assert precision_config(cfg, unset) is cfg
