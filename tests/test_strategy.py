"""ModalityAwareFedAvg on real Flower Messages: grouping, weighting, validation, robustness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flower_messages import reply_metadata
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from ppa.config import load_config
from ppa.data.records import Modality
from ppa.model import create_model
from ppa.wire import PROTO_COUNT, PROTO_SUM, SHARED, global_keys, pack, parameter_group, site_keys
from server.aggregation import (
    aggregate_updates,
    clip_update,
    krum_select,
    update_norm,
)
from server.run import build_strategy
from server.strategy import ModalityAwareFedAvg

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model(load_config(["model=tiny"]).model, NUM_CLASSES)
    state = model.state_dict()
    return {k: state[k] for k in global_keys(state)}


def make_strategy(reference, **kwargs) -> ModalityAwareFedAvg:
    return ModalityAwareFedAvg(reference, NUM_CLASSES, **kwargs)


def site_arrays(reference, modality: Modality, value: float) -> dict[str, np.ndarray]:
    """A site update where every float entry equals `value` (easy weighted means)."""
    out = {}
    for k in site_keys(reference, modality):
        arr = reference[k].numpy()
        out[k] = np.full_like(arr, value) if np.issubdtype(arr.dtype, np.floating) else arr
    return out


def reply(
    node: int,
    site: str,
    modality: Modality,
    arrays: dict[str, np.ndarray],
    examples: float,
    protos: tuple[np.ndarray, np.ndarray] | None = None,
    error: str | None = None,
) -> Message:
    meta = reply_metadata(node, MessageType.TRAIN)
    if error is not None:
        return Message(error=Error(code=1, reason=error), metadata=meta)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": float(examples), "loss": 1.0}),
            "site": ConfigRecord({"site": site, "modality": modality.value}),
        }
    )
    if protos is not None:
        content["prototypes"] = ArrayRecord(
            {PROTO_SUM: Array(protos[0]), PROTO_COUNT: Array(protos[1])}
        )
    return Message(content=content, metadata=meta)


def as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def test_modality_aware_weighted_aggregation(reference) -> None:
    strategy = make_strategy(reference)
    dim = strategy.dim
    replies = [
        reply(
            1,
            "cam1",
            Modality.VISIBLE,
            site_arrays(reference, Modality.VISIBLE, 1.0),
            10,
            (np.ones((NUM_CLASSES, dim)), np.array([1.0, 0, 0, 0])),
        ),
        reply(
            2,
            "cam2",
            Modality.VISIBLE,
            site_arrays(reference, Modality.VISIBLE, 4.0),
            30,
            (3 * np.ones((NUM_CLASSES, dim)), np.array([3.0, 0, 0, 0])),
        ),
        reply(
            3,
            "cam3",
            Modality.INFRARED,
            site_arrays(reference, Modality.INFRARED, 8.0),
            60,
            (np.ones((NUM_CLASSES, dim)), np.array([0, 2.0, 0, 0])),
        ),
    ]
    strategy._sampled[1] = 3
    record, metrics = strategy.aggregate_train(1, replies)
    out = as_numpy(record)
    # shared: (10*1 + 30*4 + 60*8) / 100
    assert out["classifier.weight"] == pytest.approx(np.full_like(out["classifier.weight"], 6.1))
    # visible stem/offset: only the visible sites, (10*1 + 30*4) / 40
    assert out["stems.visible.conv1.weight"].flat[0] == pytest.approx(3.25)
    assert out["offsets.visible"] == pytest.approx(np.full(dim, 3.25))
    # infrared stem/offset: the infrared site alone
    assert out["offsets.infrared"] == pytest.approx(np.full(dim, 8.0))
    # integer buffers are never averaged into floats
    assert metrics["num-examples"] == 100
    assert metrics["loss"] == pytest.approx(1.0)
    # prototypes: per-modality sums and counts
    assert strategy.proto_counts[0].tolist() == [4.0, 0, 0, 0]
    assert strategy.proto_counts[1].tolist() == [0, 2.0, 0, 0]
    assert strategy.proto_sums[0, 0, 0] == pytest.approx(4.0)
    assert strategy.last_report.replied == ["cam1", "cam2", "cam3"]
    assert strategy.last_report.bytes_received > 0


def test_modality_balanced_site_weights(reference) -> None:
    """site_weighting=modality_balanced: the shared parts give each modality one half (split
    by examples within it); stems and offsets stay the within-modality means, and the drift
    is measured against the same aggregate."""
    strategy = make_strategy(reference, site_weighting="modality_balanced")
    replies = [
        reply(1, "cam1", Modality.VISIBLE, site_arrays(reference, Modality.VISIBLE, 1.0), 10),
        reply(2, "cam2", Modality.VISIBLE, site_arrays(reference, Modality.VISIBLE, 4.0), 30),
        reply(3, "cam3", Modality.INFRARED, site_arrays(reference, Modality.INFRARED, 8.0), 60),
    ]
    strategy._sampled[1] = 3
    record, _ = strategy.aggregate_train(1, replies)
    out = as_numpy(record)
    # shared: 0.5 * (10*1 + 30*4) / 40 + 0.5 * 8 (FedAvg's weights would give 6.1)
    expected = 0.5 * 3.25 + 0.5 * 8.0
    assert out["classifier.weight"] == pytest.approx(
        np.full_like(out["classifier.weight"], expected)
    )
    assert out["stems.visible.conv1.weight"].flat[0] == pytest.approx(3.25)
    assert out["offsets.infrared"] == pytest.approx(np.full(strategy.dim, 8.0))
    # Drift against the balanced aggregate: |8 - w| / |5.625 - w| over the shared parameters.
    steps = [
        k
        for k in out
        if parameter_group(k).kind == SHARED
        and not k.endswith(("running_mean", "running_var"))
        and np.issubdtype(out[k].dtype, np.floating)
    ]
    start = {k: reference[k].numpy().astype(np.float64) for k in steps}
    own = sum(float(((8.0 - start[k]) ** 2).sum()) for k in steps)
    agg = sum(float(((expected - start[k]) ** 2).sum()) for k in steps)
    drift = strategy.last_report.drift.sites
    assert drift["cam3"]["norm_ratio"] == pytest.approx((own / agg) ** 0.5, rel=1e-5)


def test_site_weighting_is_checked(reference) -> None:
    with pytest.raises(ValueError, match="site_weighting must be one of"):
        make_strategy(reference, site_weighting="equal")


@pytest.mark.parametrize("weighting", ["examples", "modality_balanced"])
def test_the_run_gives_the_strategy_its_site_weighting(weighting: str) -> None:
    cfg = load_config(["model=tiny", f"federation.aggregation.site_weighting={weighting}"])
    model = create_model(cfg.model, NUM_CLASSES)
    assert build_strategy(cfg, model).site_weighting == weighting


def test_malformed_and_failed_replies_are_dropped_and_named(reference) -> None:
    strategy = make_strategy(reference)
    good = site_arrays(reference, Modality.VISIBLE, 1.0)
    nan = dict(good)
    nan["classifier.weight"] = np.full_like(good["classifier.weight"], np.nan)
    wrong_shape = dict(good)
    wrong_shape["classifier.weight"] = np.ones((3, 3), np.float32)
    extra = site_arrays(reference, Modality.INFRARED, 1.0)
    extra["stems.visible.conv1.weight"] = good["stems.visible.conv1.weight"]
    strategy._sampled[1] = 6
    record, _ = strategy.aggregate_train(
        1,
        [
            reply(1, "cam1", Modality.VISIBLE, good, 10),
            reply(2, "cam2", Modality.VISIBLE, nan, 10),
            reply(3, "cam4", Modality.VISIBLE, wrong_shape, 10),
            reply(4, "cam3", Modality.INFRARED, extra, 10),
            reply(5, "cam5", Modality.VISIBLE, good, 0),
            reply(6, "cam6", Modality.INFRARED, {}, 10, error="ClientApp raised"),
        ],
    )
    failed = " | ".join(strategy.last_report.failed)
    for expected in (
        "'cam2'",
        "NaN",
        "'cam4'",
        "shape",
        "'cam3'",
        "unexpected",
        "'cam5'",
        "node 6",
        "ClientApp raised",
    ):
        assert expected in failed
    assert strategy.last_report.replied == ["cam1"]
    out = as_numpy(record)
    assert all(np.isfinite(v).all() for v in out.values())
    assert out["classifier.weight"].flat[0] == 1.0
    # no infrared reply survived: the infrared stem keeps the global value
    np.testing.assert_array_equal(
        out["stems.infrared.conv1.weight"], reference["stems.infrared.conv1.weight"].numpy()
    )


def test_negative_variances_are_rejected(reference) -> None:
    strategy = make_strategy(reference)
    bad = site_arrays(reference, Modality.VISIBLE, 1.0)
    bad["trunk.layer1.0.bn1.running_var"] = -np.ones_like(bad["trunk.layer1.0.bn1.running_var"])
    strategy._sampled[1] = 1
    record, _ = strategy.aggregate_train(1, [reply(1, "cam1", Modality.VISIBLE, bad, 5)])
    assert record is None
    assert "negative variances" in strategy.last_report.failed[0]


def test_no_usable_reply_keeps_the_global_model(reference) -> None:
    strategy = make_strategy(reference)
    strategy._sampled[2] = 1
    record, metrics = strategy.aggregate_train(
        2, [reply(1, "cam1", Modality.VISIBLE, {}, 1, error="boom")]
    )
    assert record is None and metrics is None


def test_result_does_not_depend_on_arrival_order(reference) -> None:
    rng = np.random.default_rng(0)
    msgs = []
    for i, (site, mod) in enumerate(
        [
            ("cam1", Modality.VISIBLE),
            ("cam2", Modality.VISIBLE),
            ("cam3", Modality.INFRARED),
            ("cam6", Modality.INFRARED),
        ]
    ):
        arrays = {
            k: (np.abs(v) + rng.random(size=v.shape)).astype(v.dtype)
            if np.issubdtype(v.dtype, np.floating)
            else v
            for k, v in site_arrays(reference, mod, 0.0).items()
        }
        msgs.append((i + 1, site, mod, arrays, 7 + 3 * i))
    a = as_numpy(make_strategy(reference).aggregate_train(1, [reply(*m) for m in msgs])[0])
    b = as_numpy(make_strategy(reference).aggregate_train(1, [reply(*m) for m in msgs[::-1]])[0])
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_robust_rules_and_anomaly_flags(reference) -> None:
    rng = np.random.default_rng(1)
    base = {k: v.numpy() for k, v in reference.items()}
    keys = site_keys(reference, Modality.VISIBLE)

    def perturbed(delta_of) -> dict[str, np.ndarray]:
        # BatchNorm variances stay as they are: a negative one is rejected outright.
        return {
            k: (base[k] + delta_of(k)).astype(base[k].dtype)
            if np.issubdtype(base[k].dtype, np.floating) and not k.endswith("running_var")
            else base[k]
            for k in keys
        }

    # Honest sites move the same way (one objective) with their own noise.
    common = {k: 0.01 * rng.normal(size=base[k].shape) for k in keys}
    honest = [
        perturbed(lambda k: common[k] + 0.005 * rng.normal(size=base[k].shape)) for _ in range(5)
    ]
    attacker = perturbed(lambda k: 100.0 * (honest[0][k] - base[k]))  # scaled update
    flipped = perturbed(lambda k: -5.0 * (honest[1][k] - base[k]))  # sign-flipped update
    msgs = [reply(i + 1, f"site{i}", Modality.VISIBLE, a, 10) for i, a in enumerate(honest)]
    msgs += [
        reply(9, "evil", Modality.VISIBLE, attacker, 10),
        reply(10, "flip", Modality.VISIBLE, flipped, 10),
    ]
    shared = [k for k in keys if k.startswith("trunk") and base[k].dtype == np.float32]
    clean = as_numpy(make_strategy(reference).aggregate_train(1, msgs[:5])[0])
    honest_norm = update_norm(honest[0], base, shared)  # one honest update's size
    for rule in ("median", "trimmed_mean", "krum"):
        strategy = make_strategy(reference, rule=rule, trim_fraction=0.3)
        out = as_numpy(strategy.aggregate_train(1, msgs)[0])
        assert update_norm(out, clean, shared) < honest_norm, rule
        assert set(strategy.last_report.anomalies.flagged) == {"evil", "flip"}, rule
    # Plain FedAvg is dragged far away by the scaled update.
    out = as_numpy(make_strategy(reference, rule="fedavg").aggregate_train(1, msgs)[0])
    assert update_norm(out, clean, shared) > 10 * honest_norm
    # Excluding flagged sites makes even FedAvg robust: it is the clean mean.
    strategy = make_strategy(reference, rule="fedavg", exclude_anomalies=True)
    out = as_numpy(strategy.aggregate_train(1, msgs)[0])
    assert update_norm(out, clean, shared) < 1e-4


def test_aggregation_rules_by_hand() -> None:
    ups = [
        {"w": np.array([1.0, 10.0])},
        {"w": np.array([2.0, 20.0])},
        {"w": np.array([3.0, 30.0])},
        {"w": np.array([100.0, -100.0])},
    ]
    mean = aggregate_updates(ups, [1, 1, 1, 1], ["w"], "fedavg")["w"]
    assert mean.tolist() == pytest.approx([26.5, -10.0])
    assert aggregate_updates(ups, [1, 1, 1, 1], ["w"], "median")["w"].tolist() == [2.5, 15.0]
    trimmed = aggregate_updates(ups, [1, 1, 1, 1], ["w"], "trimmed_mean", trim_fraction=0.25)
    assert trimmed["w"].tolist() == [2.5, 15.0]
    assert krum_select(ups, ["w"], byzantine=1) in (0, 1, 2)
    assert aggregate_updates(ups[:2], [3, 1], ["w"], "median")["w"].tolist() == [1.25, 12.5]
    clipped = clip_update({"w": np.array([3.0, 4.0])}, {"w": np.zeros(2)}, ["w"], 1.0)
    assert clipped["w"].tolist() == pytest.approx([0.6, 0.8])
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        aggregate_updates(ups, [1] * 4, ["w"], "mean")


def test_strategy_state_round_trip(reference) -> None:
    a = make_strategy(reference, seed=3)
    a.proto_sums[0, 1, 2] = 5.0
    a.rng.random()
    b = make_strategy(reference, seed=99)
    b.load_state_dict(a.state_dict())
    assert b.rng.random() == a.rng.random()
    assert b.proto_sums[0, 1, 2] == 5.0
    record = b.prototype_record()
    assert record[f"{PROTO_SUM}.visible"].numpy()[1, 2] == 5.0


def test_pack_half_precision_halves_float_bytes(reference) -> None:
    full = pack(reference, global_keys(reference))
    half = pack(reference, global_keys(reference), half_precision=True)
    full_bytes = sum(v.nbytes for v in full.values())
    half_bytes = sum(v.nbytes for v in half.values())
    assert half_bytes < 0.55 * full_bytes
    assert half["classifier.weight"].dtype == np.float16


def test_server_momentum_is_fedavgm_by_hand(reference) -> None:
    """Two rounds of FedAvgM (lr 0.5, momentum 0.9) against the update rule computed by hand;
    running statistics are averaged, never extrapolated; the velocity survives a checkpoint."""
    strategy = make_strategy(reference, server_lr=0.5, server_momentum=0.9)
    w0 = reference["classifier.weight"].numpy().astype(np.float64)
    rv0 = reference["trunk.layer1.0.bn1.running_var"].numpy().astype(np.float64)

    def one_round(number: int, value: float) -> dict[str, np.ndarray]:
        strategy._sampled[number] = 2
        record, _ = strategy.aggregate_train(
            number,
            [
                reply(
                    1, "cam1", Modality.VISIBLE, site_arrays(reference, Modality.VISIBLE, value), 1
                ),
                reply(
                    2,
                    "cam3",
                    Modality.INFRARED,
                    site_arrays(reference, Modality.INFRARED, value),
                    1,
                ),
            ],
        )
        return as_numpy(record)

    first = one_round(1, 2.0)
    v1 = 2.0 - w0  # velocity = the first aggregated change
    w1 = w0 + 0.5 * v1
    np.testing.assert_allclose(first["classifier.weight"], w1, rtol=1e-5, atol=1e-6)
    stats = "trunk.layer1.0.bn1.running_var"
    assert first[stats] == pytest.approx(np.full_like(rv0, 2.0))  # plain mean
    saved = strategy.state_dict()

    second = one_round(2, 3.0)
    v2 = 0.9 * v1 + (3.0 - w1)
    np.testing.assert_allclose(second["classifier.weight"], w1 + 0.5 * v2, rtol=1e-5, atol=1e-6)

    # A resumed strategy (state from the checkpoint) takes the same second step.
    resumed = make_strategy(reference, server_lr=0.5, server_momentum=0.9)
    resumed.current = {k: v.copy() for k, v in first.items()}
    resumed.load_state_dict(saved)
    strategy = resumed
    again = one_round(2, 3.0)
    np.testing.assert_array_equal(again["classifier.weight"], second["classifier.weight"])


def test_the_velocity_follows_the_sites_learning_rate(reference) -> None:
    """With the sites' round learning rates (1, 1, 0.1), FedAvgM's velocity is scaled by
    lr_t / lr_s before the round's change is added: v2 = 0.5 v1 + d2, v3 = 0.5 * 0.1 v2 + d3;
    without them the old velocity carries over unscaled. The scaling survives a checkpoint."""
    rates = {1: 1.0, 2: 1.0, 3: 0.1}
    w0 = reference["classifier.weight"].numpy().astype(np.float64)

    def run(strategy: ModalityAwareFedAvg, rounds: dict[int, float]) -> dict[str, np.ndarray]:
        for number, value in rounds.items():
            strategy._sampled[number] = 2
            record, _ = strategy.aggregate_train(
                number,
                [
                    reply(1, "cam1", Modality.VISIBLE,
                          site_arrays(reference, Modality.VISIBLE, value), 1),
                    reply(2, "cam3", Modality.INFRARED,
                          site_arrays(reference, Modality.INFRARED, value), 1),
                ],
            )  # fmt: skip
        return as_numpy(record)

    values = {1: 2.0, 2: 3.0, 3: 2.5}
    v1 = 2.0 - w0
    w1 = w0 + v1
    v2 = 0.5 * v1 + (3.0 - w1)
    w2 = w1 + v2
    scaled = run(make_strategy(reference, server_momentum=0.5, round_lr=rates.get), values)
    v3 = 0.5 * 0.1 * v2 + (2.5 - w2)
    np.testing.assert_allclose(scaled["classifier.weight"], w2 + v3, rtol=1e-5, atol=1e-5)
    plain = run(make_strategy(reference, server_momentum=0.5), values)
    v3_plain = 0.5 * v2 + (2.5 - w2)
    np.testing.assert_allclose(plain["classifier.weight"], w2 + v3_plain, rtol=1e-5, atol=1e-5)

    first = make_strategy(reference, server_momentum=0.5, round_lr=rates.get)
    after_two = run(first, {1: 2.0, 2: 3.0})
    resumed = make_strategy(reference, server_momentum=0.5, round_lr=rates.get)
    resumed.current = {k: v.copy() for k, v in after_two.items()}
    resumed.load_state_dict(first.state_dict())
    again = run(resumed, {3: 2.5})
    np.testing.assert_array_equal(again["classifier.weight"], scaled["classifier.weight"])


@pytest.mark.parametrize(("lr", "momentum"), [(0.0, 0.0), (1.0, 1.0), (1.0, -0.1)])
def test_server_optimiser_settings_are_checked(reference, lr: float, momentum: float) -> None:
    with pytest.raises(ValueError, match="server_lr"):
        make_strategy(reference, server_lr=lr, server_momentum=momentum)


def test_client_drift_against_the_aggregate_by_hand(reference) -> None:
    """Two visible sites move the shared parts by +1, one infrared site by -1: the aggregate
    moves by +1/3, so the visible sites have cosine 1, the infrared one -1, and every site's
    step is 3 times the aggregate's. drift_min_cosine=0 flags the infrared site."""
    base = {k: v.numpy() for k, v in reference.items()}

    def moved(modality: Modality, step: float) -> dict[str, np.ndarray]:
        return {
            k: (base[k] + step).astype(base[k].dtype)
            if np.issubdtype(base[k].dtype, np.floating) and not k.endswith("running_var")
            else base[k]
            for k in site_keys(reference, modality)
        }

    msgs = [
        reply(1, "cam1", Modality.VISIBLE, moved(Modality.VISIBLE, 1.0), 10),
        reply(2, "cam2", Modality.VISIBLE, moved(Modality.VISIBLE, 1.0), 10),
        reply(3, "cam3", Modality.INFRARED, moved(Modality.INFRARED, -1.0), 10),
    ]
    strategy = make_strategy(reference, anomaly_threshold=None, drift_min_cosine=0.0)
    strategy.aggregate_train(1, msgs)
    report = strategy.last_report
    drift = report.drift.sites
    assert drift["cam1"]["cosine"] == pytest.approx(1.0)
    assert drift["cam3"]["cosine"] == pytest.approx(-1.0)
    for site in ("cam1", "cam2", "cam3"):
        assert drift[site]["norm_ratio"] == pytest.approx(3.0)
        assert drift[site]["stem_cosine"] == pytest.approx(1.0)
    assert report.drift.modalities["visible"]["cosine"] == pytest.approx(1.0)
    assert report.anomalies.flagged == ["cam3"]
    assert report.anomalies.scores["cam3"]["drift_cosine"] == pytest.approx(-1.0)
    # Off by default: measured, never flagged.
    default = make_strategy(reference, anomaly_threshold=None)
    default.aggregate_train(1, msgs)
    assert default.last_report.anomalies.flagged == []
    assert default.last_report.drift.sites["cam3"]["cosine"] == pytest.approx(-1.0)


@pytest.fixture
def run_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run, node and task ids a ServerApp process has; an outgoing Message reads them."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class _Nodes:
    """What ModalityAwareFedAvg.sample asks of Flower's Grid: the connected node ids."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    def get_node_ids(self) -> list[int]:
        return self.ids


def _prototype_round(strategy: ModalityAwareFedAvg, reference) -> None:
    """cam1 and cam2 (visible) and cam3 (infrared) report prototypes of identities 0-1."""
    dim = strategy.dim
    replies = [
        reply(1, "cam1", Modality.VISIBLE, site_arrays(reference, Modality.VISIBLE, 1.0), 10,
              (np.stack([np.full(dim, 1.0), np.full(dim, 4.0), *[np.zeros(dim)] * 2]),
               np.array([1.0, 2.0, 0, 0]))),
        reply(2, "cam2", Modality.VISIBLE, site_arrays(reference, Modality.VISIBLE, 1.0), 10,
              (np.stack([np.full(dim, 6.0), *[np.zeros(dim)] * 3]), np.array([3.0, 0, 0, 0]))),
        reply(3, "cam3", Modality.INFRARED, site_arrays(reference, Modality.INFRARED, 1.0), 10,
              (np.stack([np.full(dim, 5.0), *[np.zeros(dim)] * 3]), np.array([5.0, 0, 0, 0]))),
    ]  # fmt: skip
    strategy._sampled[1] = 3
    strategy.aggregate_train(1, replies)


def _sent_prototypes(message: Message) -> dict[str, np.ndarray]:
    return as_numpy(message.content.array_records["prototypes"])


def test_prototypes_without_the_sites_own_contribution(reference, run_identity) -> None:
    strategy = make_strategy(reference, prototypes_exclude_own=True)
    _prototype_round(strategy, reference)
    sent = {
        m.metadata.dst_node_id: _sent_prototypes(m)
        for m in strategy.configure_train(2, ArrayRecord(), ConfigRecord(), _Nodes([1, 2, 3]))
    }
    vis_sum, vis_count = f"{PROTO_SUM}.visible", f"{PROTO_COUNT}.visible"
    ir_sum, ir_count = f"{PROTO_SUM}.infrared", f"{PROTO_COUNT}.infrared"
    # cam1 sees identity 0 as cam2 has it (6 / 3); identity 1 only cam1 saw: gone
    assert sent[1][vis_count].tolist() == [3.0, 0, 0, 0]
    assert sent[1][vis_sum][0, 0] == pytest.approx(6.0) and sent[1][vis_sum][1, 0] == 0.0
    # cam2 sees cam1's identity 0 (1 / 1) and identity 1 (4 / 2)
    assert sent[2][vis_count].tolist() == [1.0, 2.0, 0, 0]
    assert sent[2][vis_sum][:2, 0].tolist() == [1.0, 4.0]
    # the other modality's prototypes arrive whole; the infrared site's own modality is empty
    assert sent[1][ir_count].tolist() == [5.0, 0, 0, 0] == sent[2][ir_count].tolist()
    assert sent[3][ir_count].tolist() == [0, 0, 0, 0] and not sent[3][ir_sum].any()
    assert sent[3][vis_count].tolist() == [4.0, 2.0, 0, 0]
    assert sent[3][vis_sum][:2, 0].tolist() == [7.0, 4.0]
    # the global prototypes themselves are unchanged, and survive a checkpoint
    assert strategy.proto_counts[0].tolist() == [4.0, 2.0, 0, 0]
    restored = make_strategy(reference, prototypes_exclude_own=True)
    restored.load_state_dict(strategy.state_dict())
    assert restored.prototype_record(1)[vis_count].numpy().tolist() == [3.0, 0, 0, 0]


def test_by_default_every_site_gets_the_pooled_prototypes(reference, run_identity) -> None:
    strategy = make_strategy(reference)
    _prototype_round(strategy, reference)
    messages = strategy.configure_train(2, ArrayRecord(), ConfigRecord(), _Nodes([1, 2, 3]))
    counts = [_sent_prototypes(m)[f"{PROTO_COUNT}.visible"].tolist() for m in messages]
    assert counts == [[4.0, 2.0, 0, 0]] * 3


def test_classifier_rows_over_the_sites_holding_each_identity(reference) -> None:
    """classifier_rows=holding_sites: each identity's row averages only the sites that report
    prototypes of it (by their counts); every other shared array stays the weighted mean."""
    strategy = make_strategy(reference, classifier_rows="holding_sites")
    dim = strategy.dim
    w0 = reference["classifier.weight"].numpy().astype(np.float64)
    counts = [np.array([1.0, 0, 0, 0]), np.array([3.0, 2.0, 0, 0]), np.array([0, 2.0, 0, 0])]
    values = [1.0, 4.0, 8.0]
    replies = [
        reply(node, f"cam{node}", modality, site_arrays(reference, modality, value), examples,
              (np.zeros((NUM_CLASSES, dim)), count))
        for node, modality, value, examples, count in zip(
            (1, 2, 3), (Modality.VISIBLE, Modality.VISIBLE, Modality.INFRARED), values,
            (10, 30, 60), counts, strict=True)
    ]  # fmt: skip
    strategy._sampled[1] = 3
    record, _ = strategy.aggregate_train(1, replies)
    out = as_numpy(record)
    weight = out["classifier.weight"]
    np.testing.assert_allclose(weight[0], np.full(dim, (1 * 1.0 + 3 * 4.0) / 4), rtol=1e-6)
    np.testing.assert_allclose(weight[1], np.full(dim, (2 * 4.0 + 2 * 8.0) / 4), rtol=1e-6)
    np.testing.assert_allclose(weight[2:], w0[2:], rtol=1e-6)  # held by no site this round
    assert out["offsets.visible"] == pytest.approx(np.full(dim, 3.25))
    assert out["neck.weight"] == pytest.approx(np.full(dim, 6.1))


def test_classifier_rows_by_holders_need_every_sites_counts(reference) -> None:
    strategy = make_strategy(reference, classifier_rows="holding_sites")
    replies = [
        reply(1, "cam1", Modality.VISIBLE, site_arrays(reference, Modality.VISIBLE, 1.0), 10),
        reply(2, "cam3", Modality.INFRARED, site_arrays(reference, Modality.INFRARED, 1.0), 10),
    ]
    strategy._sampled[1] = 2
    with pytest.raises(Exception, match="prototype counts; none from cam1, cam3"):
        strategy.aggregate_train(1, replies)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classifier_rows": "per_site"}, "must be one of"),
        ({"classifier_rows": "holding_sites", "rule": "median"}, "does not combine"),
    ],
)
def test_classifier_rows_settings_are_checked(reference, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        make_strategy(reference, **kwargs)


@pytest.mark.parametrize("prototypes", [True, False])
def test_classifier_rows_by_holders_need_the_prototypes_in_the_config(prototypes: bool) -> None:
    """The run's strategy takes the setting from the config, and refuses it where no site
    would send the counts it weights by."""
    cfg = load_config(
        [
            "model=tiny",
            "federation.aggregation.classifier_rows=holding_sites",
            f"federation.prototypes={str(prototypes).lower()}",
        ]
    )
    model = create_model(cfg.model, NUM_CLASSES)
    if prototypes:
        assert build_strategy(cfg, model).classifier_rows == "holding_sites"
    else:
        with pytest.raises(ValueError, match=r"needs federation\.prototypes=true"):
            build_strategy(cfg, model)


@pytest.mark.parametrize(
    ("follows", "site_gamma", "after_step"), [(True, None, 0.1), (True, 0.3, 0.3), (False, None, 0)]
)
def test_the_run_gives_the_strategy_the_sites_round_learning_rates(
    follows: bool, site_gamma: float | None, after_step: float
) -> None:
    """federation.aggregation.momentum_follows_lr hands the strategy the sites' schedule over
    the rounds' global epochs (2 local epochs, step at epoch 12), with federation.lr_gamma's
    decay where it is set."""
    cfg = load_config(
        [
            "model=tiny",
            "train.warmup_epochs=0",
            "train.lr_steps=[12]",
            "federation.local_epochs=2",
            f"federation.lr_gamma={'null' if site_gamma is None else site_gamma}",
            f"federation.aggregation.momentum_follows_lr={str(follows).lower()}",
        ]
    )
    strategy = build_strategy(cfg, create_model(cfg.model, NUM_CLASSES))
    if not follows:
        assert strategy.round_lr is None
        return
    assert [strategy.round_lr(r) for r in (1, 6, 7, 8)] == pytest.approx(
        [1.0, 1.0, after_step, after_step]
    )
