"""server/aggregation.py against Flower's own strategies, and its rules by hand.

The robust rules re-implement what Flower's `FedTrimmedAvg`, `FedMedian`, `Krum` (Message API)
and its fixed-norm update clipping do, per parameter group. The differential tests feed the
same site updates to both and require the same aggregate.
"""

from __future__ import annotations

import numpy as np
import pytest
from flower_messages import reply_metadata
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum
from flwr.supercore.differential_privacy import compute_clip_model_update

from server.aggregation import (
    RULES,
    aggregate_updates,
    clip_update,
    krum_select,
    pairwise_sq_distances,
    rows_by_holders,
    site_weights,
    update_norm,
)

SHAPES = {"conv.weight": (3, 2, 2), "fc.weight": (4, 3), "offset": (5,)}
KEYS = list(SHAPES)


def random_updates(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    centre = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    updates = []
    for i in range(n):
        scale = 10.0 if i == n - 1 else 1.0  # one far-off site, as a robust rule expects
        updates.append(
            {
                k: (centre[k] + scale * rng.normal(size=s)).astype(np.float32)
                for k, s in SHAPES.items()
            }
        )
    return updates


def replies(updates, weights) -> list[Message]:
    """Train replies as Flower's strategies receive them (fresh: FedTrimmedAvg pops arrays)."""
    out = []
    for node, (update, weight) in enumerate(zip(updates, weights, strict=True), start=1):
        meta = reply_metadata(node, MessageType.TRAIN)
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v.copy()) for k, v in update.items()}),
                "metrics": MetricRecord({"num-examples": float(weight)}),
            }
        )
        out.append(Message(content=content, metadata=meta))
    return out


def flower(strategy, updates, weights) -> dict[str, np.ndarray]:
    arrays, _ = strategy.aggregate_train(1, replies(updates, weights))
    return {k: v.numpy() for k, v in arrays.items()}


def assert_same(ours: dict, theirs: dict, *, exact: bool = False) -> None:
    assert set(ours) == set(theirs)
    for key in ours:
        assert ours[key].dtype == np.float32
        assert ours[key].shape == theirs[key].shape
        if exact:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
        else:
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-6, err_msg=key)


WEIGHTS = [3.0, 1.0, 7.0, 2.0, 5.0, 4.0, 6.0, 1.5]


@pytest.mark.parametrize("n", [3, 4, 5, 8])
@pytest.mark.parametrize("beta", [0.0, 0.2, 0.3, 0.45])
def test_trimmed_mean_equals_flowers_fedtrimmedavg(n: int, beta: float) -> None:
    updates = random_updates(n, seed=n)
    ours = aggregate_updates(updates, WEIGHTS[:n], KEYS, "trimmed_mean", trim_fraction=beta)
    assert_same(ours, flower(FedTrimmedAvg(beta=beta), updates, WEIGHTS[:n]))


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_median_equals_flowers_fedmedian(n: int) -> None:
    updates = random_updates(n, seed=10 + n)
    ours = aggregate_updates(updates, WEIGHTS[:n], KEYS, "median")
    assert_same(ours, flower(FedMedian(), updates, WEIGHTS[:n]))


@pytest.mark.parametrize(("n", "byzantine"), [(3, 0), (4, 1), (5, 1), (6, 2), (8, 1), (8, 3)])
def test_krum_equals_flowers_krum(n: int, byzantine: int) -> None:
    updates = random_updates(n, seed=20 + n + byzantine)
    ours = aggregate_updates(updates, WEIGHTS[:n], KEYS, "krum", byzantine=byzantine)
    theirs = flower(Krum(num_malicious_nodes=byzantine), updates, WEIGHTS[:n])
    assert_same(ours, theirs, exact=True)
    # Krum picks one honest update, never the far-off one.
    chosen = krum_select(updates, KEYS, byzantine)
    assert chosen != n - 1
    assert_same(ours, updates[chosen], exact=True)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_fedavg_equals_flowers_weighted_fedavg(n: int) -> None:
    updates = random_updates(n, seed=30 + n)
    ours = aggregate_updates(updates, WEIGHTS[:n], KEYS, "fedavg")
    assert_same(ours, flower(FedAvg(), updates, WEIGHTS[:n]))


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e6])
def test_clipping_equals_flowers_fixed_clipping(max_norm: float) -> None:
    reference, update = random_updates(2, seed=40)
    ours = clip_update(update, reference, KEYS, max_norm)
    theirs = [update[k].copy() for k in KEYS]
    compute_clip_model_update(theirs, [reference[k] for k in KEYS], max_norm)
    for key, value in zip(KEYS, theirs, strict=True):
        np.testing.assert_allclose(ours[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    assert update_norm(ours, reference, KEYS) == pytest.approx(
        min(max_norm, update_norm(update, reference, KEYS)), rel=1e-5
    )


# By hand -------------------------------------------------------------------------------------


def test_below_three_sites_every_rule_is_the_weighted_mean() -> None:
    ups = [{"w": np.array([0.0, 4.0])}, {"w": np.array([8.0, 0.0])}]
    for rule in RULES:
        out = aggregate_updates(ups, [3.0, 1.0], ["w"], rule)["w"]
        assert out.tolist() == [2.0, 3.0], rule
        assert out.dtype == np.float32


def test_zero_weights_fall_back_to_the_plain_mean() -> None:
    ups = [{"w": np.array([1.0])}, {"w": np.array([3.0])}]
    assert aggregate_updates(ups, [0.0, 0.0], ["w"], "fedavg")["w"].tolist() == [2.0]


def test_only_the_listed_keys_are_aggregated() -> None:
    ups = [{"w": np.ones(2), "v": np.zeros(1)}, {"w": np.zeros(2), "v": np.ones(1)}]
    assert set(aggregate_updates(ups, [1, 1], ["w"], "fedavg")) == {"w"}


def test_robust_rules_ignore_weights() -> None:
    ups = [{"w": np.array([v])} for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    for weights in ([1, 1, 1, 1, 1], [100, 1, 1, 1, 1000]):
        assert aggregate_updates(ups, weights, ["w"], "median")["w"].tolist() == [3.0]
        trimmed = aggregate_updates(ups, weights, ["w"], "trimmed_mean", trim_fraction=0.2)
        assert trimmed["w"].tolist() == [3.0]


def test_trim_never_removes_every_site() -> None:
    ups = [{"w": np.array([v])} for v in (1.0, 2.0, 9.0)]
    out = aggregate_updates(ups, [1, 1, 1], ["w"], "trimmed_mean", trim_fraction=0.9)
    assert out["w"].tolist() == [2.0]


def test_pairwise_distances_sum_over_keys() -> None:
    ups = [
        {"a": np.array([0.0, 0.0]), "b": np.array([[0.0]])},
        {"a": np.array([3.0, 4.0]), "b": np.array([[1.0]])},
        {"a": np.array([0.0, 1.0]), "b": np.array([[2.0]])},
    ]
    dist = pairwise_sq_distances(ups, ["a", "b"])
    expected = np.array([[0.0, 26.0, 5.0], [26.0, 0.0, 19.0], [5.0, 19.0, 0.0]])
    np.testing.assert_allclose(dist, expected)
    np.testing.assert_allclose(
        pairwise_sq_distances(ups, ["a"]), expected - [[0, 1, 4], [1, 0, 1], [4, 1, 0]]
    )


def test_krum_scores_count_n_minus_f_minus_2_neighbours() -> None:
    # Points on a line: 0, 1, 2, 10, 11. With f=1, each scores its 2 nearest.
    ups = [{"w": np.array([v])} for v in (0.0, 1.0, 2.0, 10.0, 11.0)]
    # Scores: 0 -> 1+4=5, 1 -> 1+1=2, 2 -> 1+4=5, 10 -> 1+64=65, 11 -> 1+81=82.
    assert krum_select(ups, ["w"], byzantine=1) == 1
    # With f=2 one neighbour each: 0 -> 1, 1 -> 1, 2 -> 1, 10 -> 1, 11 -> 1: first wins.
    assert krum_select(ups, ["w"], byzantine=2) == 0
    # With f=0 three neighbours: 0 -> 1+4+100=105, 1 -> 1+1+81=83, 2 -> 1+4+64=69,
    # 10 -> 1+64+81=146, 11 -> 1+81+100=182.
    assert krum_select(ups, ["w"], byzantine=0) == 2
    # Far too many byzantine sites: still one neighbour, not zero.
    assert krum_select(ups, ["w"], byzantine=10) == 0


def test_update_norm_and_clip_by_hand() -> None:
    ref = {"a": np.array([1.0, 1.0]), "b": np.array([0.0])}
    up = {"a": np.array([4.0, 1.0]), "b": np.array([4.0]), "c": np.array([7.0])}
    assert update_norm(up, ref, ["a", "b"]) == pytest.approx(5.0)
    clipped = clip_update(up, ref, ["a", "b"], 2.5)
    assert clipped["a"].tolist() == pytest.approx([2.5, 1.0])
    assert clipped["b"].tolist() == pytest.approx([2.0])
    assert clipped["c"].tolist() == [7.0]  # keys outside the group are passed through
    assert clipped["a"].dtype == np.float32
    unclipped = clip_update(up, ref, ["a", "b"], 5.0)
    assert unclipped["a"] is up["a"]
    same = clip_update(ref, ref, ["a", "b"], 0.0)
    assert same["a"] is ref["a"]


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="at least one update"):
        aggregate_updates([], [], ["w"])
    with pytest.raises(ValueError, match="unknown aggregation rule 'mean'"):
        aggregate_updates([{"w": np.ones(1)}], [1], ["w"], "mean")


def test_an_update_of_norm_one_is_still_clipped() -> None:
    ref = {"w": np.zeros(2)}
    clipped = clip_update({"w": np.array([0.6, 0.8])}, ref, ["w"], 0.5)
    assert clipped["w"].tolist() == pytest.approx([0.3, 0.4])


def test_defaults_are_fedavg_and_one_byzantine_site() -> None:
    ups = [{"w": np.array([v])} for v in (0.0, 1.0, 2.0, 10.0, 11.0)]
    assert aggregate_updates(ups, [1, 1, 1, 1, 6], ["w"])["w"].tolist() == pytest.approx([7.9])
    # Krum with f = 1 picks 1.0 (f = 2 would pick 0.0, see the scores above).
    assert aggregate_updates(ups, [1] * 5, ["w"], "krum")["w"].tolist() == [1.0]


def test_error_messages_exactly() -> None:
    with pytest.raises(ValueError, match=r"^aggregate_updates needs at least one update$"):
        aggregate_updates([], [], ["w"])
    with pytest.raises(
        ValueError,
        match=r"^unknown aggregation rule 'mean'; expected one of "
        r"\('fedavg', 'trimmed_mean', 'median', 'krum'\)$",
    ):
        aggregate_updates([{"w": np.ones(1)}], [1], ["w"], "mean")


def test_fractional_weights_and_float32_output_of_every_rule() -> None:
    ups = [{"w": np.array([0.0, 4.0])}, {"w": np.array([8.0, 0.0])}, {"w": np.array([1.0, 1.0])}]
    # Weights summing to less than one are still weights, not a fall-back to the plain mean.
    out = aggregate_updates(ups[:2], [0.25, 0.5], ["w"], "fedavg")["w"]
    assert out.tolist() == pytest.approx([16 / 3, 4 / 3])
    for rule in RULES:
        assert aggregate_updates(ups, [1, 1, 1], ["w"], rule)["w"].dtype == np.float32, rule


def test_default_trim_fraction_cuts_one_in_five() -> None:
    ups = [{"w": np.array([v])} for v in (0.0, 1.0, 2.0, 10.0, 100.0)]
    out = aggregate_updates(ups, [1] * 5, ["w"], "trimmed_mean")["w"]
    assert out.tolist() == pytest.approx([13 / 3])


def test_rows_by_holders_by_hand() -> None:
    """Row c over the sites holding class c, weighted by their counts; a row nobody holds
    keeps the reference; 3-d rows (a class's filter bank) broadcast the same way."""
    ref = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    updates = [
        np.array([[4.0, 0.0], [9.0, 9.0], [5.0, 5.0]]),
        np.array([[1.0, 2.0], [3.0, 3.0], [7.0, 7.0]]),
    ]
    counts = [np.array([1.0, 0.0, 0.0]), np.array([3.0, 2.0, 0.0])]
    out = rows_by_holders(ref, updates, counts)
    np.testing.assert_allclose(out[0], [(1 * 4 + 3 * 1) / 4, (3 * 2) / 4])
    np.testing.assert_allclose(out[1], [3.0, 3.0])  # the first site's 9s: it holds none of 1
    np.testing.assert_allclose(out[2], [2.0, 2.0])
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="do not fit 3"):
        rows_by_holders(ref, updates, [np.ones(2), np.ones(2)])
    with pytest.raises(ValueError, match="non-negative"):
        rows_by_holders(ref, updates, [np.array([1.0, -1.0, 0.0]), np.ones(3)])
    cube = rows_by_holders(np.zeros((2, 2, 2)), [np.ones((2, 2, 2)), 3 * np.ones((2, 2, 2))],
                           [np.array([1.0, 1.0]), np.array([3.0, 0.0])])  # fmt: skip
    np.testing.assert_allclose(cube[0], np.full((2, 2), 2.5))
    np.testing.assert_allclose(cube[1], np.ones((2, 2)))


def test_site_weights_by_hand() -> None:
    """Three visible sites of 10, 30, 60 examples and one infrared site of 50: FedAvg's
    weights follow the examples; modality-balanced ones give each modality one half."""
    counts, modalities = [10.0, 30.0, 60.0, 50.0], ["visible"] * 3 + ["infrared"]
    # FedAvg's: the examples as they are (aggregate_updates normalises them).
    assert site_weights(counts, modalities) == [10.0, 30.0, 60.0, 50.0]
    assert site_weights(counts, modalities, "modality_balanced") == pytest.approx(
        [0.05, 0.15, 0.30, 0.50]
    )
    # One modality only: the same as FedAvg's.
    assert site_weights([1.0, 3.0], ["infrared"] * 2, "modality_balanced") == pytest.approx(
        [0.25, 0.75]
    )
    with pytest.raises(ValueError, match="unknown site weighting 'equal'"):
        site_weights(counts, modalities, "equal")
    # A site without its modality (or a modality without its site) is an error, not a
    # silently shorter list of weights.
    with pytest.raises(ValueError, match="4 example counts for 3 modalities"):
        site_weights(counts, modalities[:3], "modality_balanced")
    with pytest.raises(ValueError, match="3 example counts for 4 modalities"):
        site_weights(counts[:3], modalities)
