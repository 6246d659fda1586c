"""SYSU-MM01 / RegDB metrics: hand-computed small cases, and the vectorised implementation
against the per-query reference on random matrices with ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppa.eval import reference as metrics_reference
from ppa.eval.metrics import pairwise_distance, regdb_metrics, stable_argsort, sysu_metrics

# 3 queries x 5 gallery images; query pid 4 has no match anywhere.
DIST = np.array(
    [
        [0.1, 0.5, 0.3, 0.9, 0.2],
        [0.4, 0.8, 0.1, 0.2, 0.6],
        [0.3, 0.3, 0.3, 0.3, 0.3],
    ]
)
Q_PIDS = np.array([1, 2, 4])
G_PIDS = np.array([1, 2, 1, 3, 2])
Q_CAMS = np.array([3, 6, 3])
G_CAMS = np.array([2, 1, 4, 5, 2])

BOTH = [
    pytest.param((regdb_metrics, sysu_metrics), id="vectorised"),
    pytest.param((metrics_reference.regdb_metrics, metrics_reference.sysu_metrics), id="reference"),
]


@pytest.mark.parametrize("impl", BOTH)
def test_regdb_hand_computed(impl):
    regdb, _ = impl
    result = regdb(DIST, Q_PIDS, G_PIDS)
    # q0 ranks pids 1,2,1,2,3: hits at 1, 3.  q1 ranks 1,3,1,2,2: hits at 4, 5.  q2: no match.
    np.testing.assert_allclose(result["cmc"], [0.5, 0.5, 0.5, 1.0, 1.0])
    assert result["mAP"] == pytest.approx(((1 / 1 + 2 / 3) / 2 + (1 / 4 + 2 / 5) / 2) / 2)
    assert result["mINP"] == pytest.approx((2 / 3 + 2 / 5) / 2)
    assert len(regdb(DIST, Q_PIDS, G_PIDS, max_rank=2)["cmc"]) == 2


@pytest.mark.parametrize("impl", BOTH)
def test_sysu_hand_computed_removal_and_distinct_identities(impl):
    _, sysu = impl
    result = sysu(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    # q0 (cam 3): g0 and g4 are cam 2 and removed -> ranked pids 1,2,3: hit at 1 (AP 1, INP 1).
    # q1 (cam 6): pids 1,3,1,2,2: hits at 4, 5; its identity is the 3rd distinct one.
    # Three distinct identities < 5: the curve is padded with its last value.
    np.testing.assert_allclose(result["cmc"], [0.5, 0.5, 1.0, 1.0, 1.0])
    assert result["mAP"] == pytest.approx((1.0 + (1 / 4 + 2 / 5) / 2) / 2)
    assert result["mINP"] == pytest.approx((1.0 + 2 / 5) / 2)


@pytest.mark.parametrize("impl", BOTH)
def test_sysu_query_whose_matches_are_all_removed_is_left_out(impl):
    regdb, sysu = impl
    dist = np.array([[0.2, 0.1, 0.3], [0.2, 0.1, 0.3]])
    q_pids, g_pids = np.array([7, 7]), np.array([7, 8, 9])
    # Query 0 is cam 3 and its only match is cam 2: no match left, so only query 1 counts.
    result = sysu(dist, q_pids, g_pids, [3, 6], [2, 1, 4])
    np.testing.assert_allclose(result["cmc"], [0.0, 1.0, 1.0])
    assert result["mAP"] == pytest.approx(0.5) and result["mINP"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no query"):
        sysu(dist[:1], q_pids[:1], g_pids, [3], [2, 1, 4])
    with pytest.raises(ValueError, match="no query"):
        regdb(dist, [1, 2], g_pids)


@pytest.mark.parametrize("impl", BOTH)
def test_ties_keep_gallery_order(impl):
    regdb, sysu = impl
    dist = np.full((1, 3), 0.5)
    result = regdb(dist, [1], [2, 1, 1])
    np.testing.assert_allclose(result["cmc"], [0.0, 1.0, 1.0])
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert result["mINP"] == pytest.approx(2 / 3)
    assert regdb(dist, [1], [1, 2, 1])["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert sysu(dist, [1], [1, 2, 1], [6], [1, 1, 1])["cmc"].tolist() == [1.0, 1.0, 1.0]


def test_cmc_counts_each_identity_once_at_its_first_position():
    # Ranked pids 5, 5, 5, 6: plain CMC finds 6 at rank 4, SYSU at rank 2 (distinct 5, 6).
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    plain = regdb_metrics(dist, [6], [5, 5, 5, 6])["cmc"]
    distinct = sysu_metrics(dist, [6], [5, 5, 5, 6], [6], [1, 1, 1, 1])["cmc"]
    np.testing.assert_allclose(plain, [0, 0, 0, 1])
    np.testing.assert_allclose(distinct, [0, 1, 1, 1])


def test_curve_length_follows_max_rank_and_gallery_size():
    rng = np.random.default_rng(0)
    dist = rng.random((4, 30))
    g_pids = np.arange(30) % 5
    q_pids = np.array([0, 1, 2, 3])
    assert len(regdb_metrics(dist, q_pids, g_pids)["cmc"]) == 20
    assert len(regdb_metrics(dist[:, :7], q_pids, g_pids[:7])["cmc"]) == 7
    result = sysu_metrics(dist, q_pids, g_pids, [6] * 4, [1] * 30, max_rank=10)
    assert len(result["cmc"]) == 10 and result["cmc"][-1] == 1.0
    for value in (result["mAP"], result["mINP"], *result["cmc"]):
        assert 0.0 <= value <= 1.0
    assert np.all(np.diff(result["cmc"]) >= 0)


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_equals_reference_on_random_matrices_with_ties(seed):
    rng = np.random.default_rng(seed)
    num_q, num_g = int(rng.integers(20, 60)), int(rng.integers(20, 80))
    # Few distinct values -> many ties; a few rows without any match.
    dist = rng.integers(0, 5, (num_q, num_g)).astype(np.float32) / 4
    q_pids, g_pids = rng.integers(0, 12, num_q), rng.integers(0, 10, num_g)
    q_cams, g_cams = rng.choice([3, 6], num_q), rng.choice([1, 2, 4, 5], num_g)
    for max_rank in (1, 5, 20, 200):
        for fast, slow in (
            (
                sysu_metrics(torch.from_numpy(dist), q_pids, g_pids, q_cams, g_cams, max_rank),
                metrics_reference.sysu_metrics(dist, q_pids, g_pids, q_cams, g_cams, max_rank),
            ),
            (
                regdb_metrics(dist.astype(np.float64), q_pids, g_pids, max_rank),
                metrics_reference.regdb_metrics(dist, q_pids, g_pids, max_rank),
            ),
        ):
            np.testing.assert_allclose(fast["cmc"], slow["cmc"], rtol=0, atol=1e-12)
            assert fast["mAP"] == pytest.approx(slow["mAP"], abs=1e-12)
            assert fast["mINP"] == pytest.approx(slow["mINP"], abs=1e-12)


def test_vectorised_handles_more_queries_than_one_block():
    rng = np.random.default_rng(7)
    dist = rng.integers(0, 50, (1100, 40)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 8, 1100), rng.integers(0, 8, 40)
    q_cams, g_cams = rng.choice([3, 6], 1100), rng.choice([1, 2, 4, 5], 40)
    fast = sysu_metrics(dist, q_pids, g_pids, q_cams, g_cams)
    slow = metrics_reference.sysu_metrics(dist, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_allclose(fast["cmc"], slow["cmc"], atol=1e-12)
    assert fast["mAP"] == pytest.approx(slow["mAP"], abs=1e-12)


def test_stable_argsort_matches_numpy_stable_sort():
    # +0.0 before -0.0: they compare equal, so they must keep their gallery order.
    values = np.array(
        [[0.5, 0.0, -0.0, -1.0, np.inf, 0.5, -np.inf, 0.0, 2.0, -1.0]], dtype=np.float32
    )
    expected = np.argsort(values, axis=1, kind="stable")
    for dtype in (torch.float32, torch.float64, torch.float16):
        order = stable_argsort(torch.from_numpy(values).to(dtype))
        assert order.tolist() == expected.tolist(), dtype
    rng = np.random.default_rng(3)
    many = (rng.integers(-3, 4, (17, 301)) / 2).astype(np.float32)
    assert (
        stable_argsort(torch.from_numpy(many)).tolist()
        == np.argsort(many, axis=1, kind="stable").tolist()
    )


def test_pairwise_distance_hand_computed():
    query = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    gallery = torch.tensor([[3.0, 4.0], [4.0, -3.0], [-6.0, -8.0]])
    cosine = pairwise_distance(query, gallery)
    torch.testing.assert_close(cosine, torch.tensor([[0.0, 1.0, 2.0], [0.4, 0.2, 1.6]]))
    euclid = pairwise_distance(query, gallery, metric="euclidean", batch_size=1)
    torch.testing.assert_close(
        euclid, torch.tensor([[0.0, 50.0**0.5, 15.0], [20.0**0.5, 18.0**0.5, 113.0**0.5]])
    )
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(37, 8)), rng.normal(size=(11, 8))
    torch.testing.assert_close(
        pairwise_distance(q, g, "euclidean", batch_size=5),
        torch.cdist(torch.from_numpy(q), torch.from_numpy(g)),
    )
    with pytest.raises(ValueError, match="metric"):
        pairwise_distance(query, gallery, metric="manhattan")
    with pytest.raises(ValueError, match="features"):
        pairwise_distance(query, gallery[:, :1])


def test_input_validation():
    with pytest.raises(ValueError, match="q_pids"):
        regdb_metrics(DIST, Q_PIDS[:2], G_PIDS)
    with pytest.raises(ValueError, match="g_cams"):
        sysu_metrics(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS[:3])
    with pytest.raises(ValueError, match="NaN"):
        regdb_metrics(np.full((1, 2), np.nan), [1], [1, 2])
    with pytest.raises(ValueError, match="max_rank"):
        regdb_metrics(DIST, Q_PIDS, G_PIDS, max_rank=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_on_cuda_equal_cpu():
    rng = np.random.default_rng(11)
    dist = torch.from_numpy(rng.integers(0, 6, (300, 200)).astype(np.float32))
    q_pids, g_pids = rng.integers(0, 20, 300), rng.integers(0, 20, 200)
    q_cams, g_cams = rng.choice([3, 6], 300), rng.choice([1, 2, 4, 5], 200)
    cpu = sysu_metrics(dist, q_pids, g_pids, q_cams, g_cams)
    gpu = sysu_metrics(dist.cuda(), q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_allclose(gpu["cmc"], cpu["cmc"], atol=1e-12)
    assert gpu["mAP"] == pytest.approx(cpu["mAP"], abs=1e-12)
    assert gpu["mINP"] == pytest.approx(cpu["mINP"], abs=1e-12)


def _assert_same(fast: dict, slow: dict) -> None:
    np.testing.assert_allclose(fast["cmc"], slow["cmc"], rtol=0, atol=1e-12)
    assert fast["mAP"] == pytest.approx(slow["mAP"], abs=1e-12)
    assert fast["mINP"] == pytest.approx(slow["mINP"], abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_key_sort_path_on_signed_zero_negative_and_narrow_distances(dtype):
    # The CPU key-sort path: -0.0 must tie with +0.0, negatives must rank first, fp16/bf16 must
    # rank as their float32 values; float64 (the torch sort path) and the reference agree.
    rng = np.random.default_rng(3)
    num_q, num_g = 70, 90
    dist = rng.integers(-3, 4, (num_q, num_g)).astype(np.float32) / 2
    dist[rng.random((num_q, num_g)) < 0.2] = -0.0
    dist[0] = np.abs(dist[0])  # a row without negatives
    rounded = torch.from_numpy(dist).to(dtype)
    exact = rounded.double().numpy()
    q_pids, g_pids = rng.integers(0, 15, num_q), rng.integers(0, 12, num_g)
    q_cams, g_cams = rng.choice([3, 6], num_q), rng.choice([1, 2, 4, 5], num_g)
    for max_rank in (1, 20):
        slow = metrics_reference.sysu_metrics(exact, q_pids, g_pids, q_cams, g_cams, max_rank)
        _assert_same(sysu_metrics(rounded, q_pids, g_pids, q_cams, g_cams, max_rank), slow)
        _assert_same(sysu_metrics(exact, q_pids, g_pids, q_cams, g_cams, max_rank), slow)
        slow = metrics_reference.regdb_metrics(exact, q_pids, g_pids, max_rank)
        _assert_same(regdb_metrics(rounded, q_pids, g_pids, max_rank), slow)


def test_identity_rank_when_the_own_identity_first_appears_late():
    # Few gallery identities repeated many times: a query's identity can first appear far past
    # the leading window while fewer than max_rank identities precede it (the wide re-read),
    # or past the window after many identities (ranked beyond max_rank).
    rng = np.random.default_rng(5)
    num_q, num_g = 40, 400
    g_pids = np.concatenate([rng.integers(0, 3, 300), rng.integers(3, 60, 100)])
    q_pids = rng.integers(0, 60, num_q)
    dist = rng.random((num_q, num_g)).astype(np.float32)
    dist[:, :300] *= 0.5  # identities 0-2 fill the top of every ranked list
    q_cams, g_cams = rng.choice([3, 6], num_q), rng.choice([1, 2, 4, 5], num_g)
    for max_rank in (5, 20, 50):
        _assert_same(
            sysu_metrics(dist, q_pids, g_pids, q_cams, g_cams, max_rank),
            metrics_reference.sysu_metrics(dist, q_pids, g_pids, q_cams, g_cams, max_rank),
        )


def test_stable_argsort_keeps_float64_precision_and_returns_int64_indices():
    # Two distances equal in float32 but not in float64: the float64 order must win.
    dist = torch.tensor([[1.0 + 1e-12, 1.0, 3.0]], dtype=torch.float64)
    order = stable_argsort(dist)
    assert order.tolist() == [[1, 0, 2]]
    assert order.dtype == torch.int64
    assert stable_argsort(dist.float()).dtype == torch.int64


@pytest.mark.parametrize("num_g", [2, 3, 5, 9, 17, 33])
def test_gallery_sizes_just_past_a_power_of_two(num_g):
    # The key-sort paths pack the gallery index into (num_g - 1).bit_length() bits: one bit
    # too few at 2**k + 1 images would mix the index into the distance bits.
    rng = np.random.default_rng(num_g)
    num_q = 12
    dist = (rng.integers(0, 3, (num_q, num_g)) / 2).astype(np.float32)  # many ties
    q_pids, g_pids = rng.integers(0, 4, num_q), rng.integers(0, 4, num_g)
    q_pids[0] = g_pids[0]  # at least one query with a match
    q_cams, g_cams = np.full(num_q, 3), np.full(num_g, 1)
    order = stable_argsort(torch.from_numpy(dist))
    assert order.tolist() == np.argsort(dist, axis=1, kind="stable").tolist()
    _assert_same(
        sysu_metrics(dist, q_pids, g_pids, q_cams, g_cams),
        metrics_reference.sysu_metrics(dist, q_pids, g_pids, q_cams, g_cams),
    )
    _assert_same(
        regdb_metrics(dist, q_pids, g_pids),
        metrics_reference.regdb_metrics(dist, q_pids, g_pids),
    )


def test_distances_below_float32_resolution_of_one_keep_their_order():
    # Distances of 1e-9 and 2e-9 are distinct float32 values; anything that shifts them by a
    # constant before ranking (e.g. + 1.0) would make them tie.
    dist32 = np.array([[2e-9, 1e-9, 3e-9]], dtype=np.float32)
    assert stable_argsort(torch.from_numpy(dist32)).tolist() == [[1, 0, 2]]
    result = regdb_metrics(dist32, [5], [7, 5, 7])
    assert result["cmc"][0] == 1.0 and result["mAP"] == 1.0
    # float64 distances equal in float32 rank by their float64 values on every path.
    dist64 = np.array([[1.0 + 1e-12, 1.0, 3.0]])
    for metrics in (
        regdb_metrics(dist64, [5], [7, 5, 7]),
        sysu_metrics(dist64, [5], [7, 5, 7], [3], [1, 4, 5]),
    ):
        assert metrics["cmc"][0] == 1.0 and metrics["mAP"] == 1.0


def test_float64_sort_path_with_more_queries_than_gallery_images():
    rng = np.random.default_rng(8)
    dist = rng.integers(0, 6, (50, 7)).astype(np.float64)
    q_pids, g_pids = rng.integers(0, 4, 50), np.array([0, 1, 2, 3, 0, 1, 2])
    q_cams, g_cams = rng.choice([3, 6], 50), rng.choice([1, 2, 4, 5], 7)
    _assert_same(
        sysu_metrics(dist, q_pids, g_pids, q_cams, g_cams),
        metrics_reference.sysu_metrics(dist, q_pids, g_pids, q_cams, g_cams),
    )


def test_integer_distances_rank_like_floats():
    as_int = np.array([[3, 1, 2], [0, 2, 1]])
    for fn, args in ((regdb_metrics, ()), (sysu_metrics, ([3, 6], [1, 2, 4]))):
        got = fn(as_int, [5, 7], [7, 5, 7], *args)
        want = fn(as_int.astype(np.float64), [5, 7], [7, 5, 7], *args)
        _assert_same(got, want)


def test_no_match_and_a_single_matching_query():
    for dist in (DIST, DIST.astype(np.float32)):  # the sort and the key-sort path
        with pytest.raises(
            ValueError,
            match=r"^no query has a correct match in the gallery \(3 queries, 5 gallery images\)",
        ):
            regdb_metrics(dist, [8, 8, 9], G_PIDS)
        # Only the first query has a match: averaged over that one query.
        one = regdb_metrics(dist, [1, 8, 9], G_PIDS)
        assert one["cmc"][0] == 1.0
        assert one["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_errors_name_the_offending_input():
    with pytest.raises(
        ValueError, match=r"^distance matrix must be non-empty \(Q, G\), got \(0, 5\)$"
    ):
        regdb_metrics(np.zeros((0, 5)), [], G_PIDS)
    with pytest.raises(ValueError, match=r"got \(3, 0\)$"):
        regdb_metrics(np.zeros((3, 0)), Q_PIDS, [])
    with pytest.raises(ValueError, match=r"got \(2, 3, 5\)$"):
        regdb_metrics(np.zeros((2, 3, 5)), [1, 2], G_PIDS)
    single = regdb_metrics(np.array([[0.5], [0.1]]), [1, 2], [1])  # one gallery image is fine
    assert single["mAP"] == 1.0
    with pytest.raises(ValueError, match=r"^distance matrix contains NaN$"):
        regdb_metrics(np.full((1, 2), np.nan), [1], [1, 2])
    for args, name in (
        ((DIST, Q_PIDS[:2], G_PIDS), "q_pids"),
        ((DIST, Q_PIDS, G_PIDS[:4]), "g_pids"),
    ):
        with pytest.raises(ValueError, match=rf"^{name} has \d+ entries"):
            regdb_metrics(*args)
    with pytest.raises(ValueError, match=r"^q_cams has 2 entries"):
        sysu_metrics(DIST, Q_PIDS, G_PIDS, Q_CAMS[:2], G_CAMS)
    with pytest.raises(ValueError, match=r"^g_cams has 3 entries"):
        sysu_metrics(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS[:3])


def test_pairwise_distance_dtypes_and_errors():
    query = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    gallery = torch.tensor([[3.0, 4.0], [4.0, -3.0]], dtype=torch.float64)
    mixed = pairwise_distance(query, gallery)  # float32 x float64 -> float64
    assert mixed.dtype == torch.float64
    torch.testing.assert_close(mixed, torch.tensor([[0.0, 1.0], [0.4, 0.2]], dtype=torch.float64))
    mixed = pairwise_distance(gallery, query, metric="euclidean")
    assert mixed.dtype == torch.float64
    ints = pairwise_distance(np.array([[3, 4]]), np.array([[0, 0], [3, 4]]), "euclidean")
    assert ints.dtype == torch.float32
    torch.testing.assert_close(ints, torch.tensor([[5.0, 0.0]]))
    with pytest.raises(ValueError, match=r"^metric must be one of cosine, euclidean, got 'l1'$"):
        pairwise_distance(query, query, metric="l1")
    with pytest.raises(ValueError, match=r"^batch_size must be >= 1, got 0$"):
        pairwise_distance(query, query, batch_size=0)
    with pytest.raises(ValueError, match=r"features must be \(Q, D\) and \(G, D\)"):
        pairwise_distance(query, query[:, :, None])  # 3-D gallery with the same D
