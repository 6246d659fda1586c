"""k-reciprocal re-ranking: a case computed by hand, a readable reference, what it fixes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ppa.config import load_config
from ppa.data import protocols
from ppa.data.loader import create_eval_loader
from ppa.data.transforms import normalize
from ppa.device import DeviceSettings
from ppa.eval.evaluate import evaluate
from ppa.eval.metrics import pairwise_distance, sysu_metrics
from ppa.eval.reranking import (
    RerankSettings,
    reciprocal_weights,
    rerank_distance,
    rerank_from_distances,
)
from ppa.model import create_model

from conftest import tiny_overrides


def test_three_points_by_hand() -> None:
    """q = 0, g1 = 1, g2 = 3 on a line; k1 = 1 (halves: k = 0), k2 = 1, lambda = 0.3."""
    dist = torch.tensor([[0.0, 1.0, 3.0], [1.0, 0.0, 2.0], [3.0, 2.0, 0.0]])
    out = rerank_from_distances(dist, 1, RerankSettings(k1=1, k2=1, lam=0.3))
    # Rows scaled by their largest distance: q (0, 1/3, 1), g1 (1/2, 0, 1), g2 (1, 2/3, 0).
    # N(., 1): q {q, g1}, g1 {g1, q}, g2 {g2, g1}; R(q) = R(g1) = {q, g1}, R(g2) = {g2}.
    vq = torch.tensor([1.0, math.exp(-1 / 3), 0.0], dtype=torch.float64)
    vq = vq / vq.sum()
    v1 = torch.tensor([math.exp(-0.5), 1.0, 0.0], dtype=torch.float64)
    v1 = v1 / v1.sum()
    jaccard_g1 = 1.0 - torch.minimum(vq, v1).sum() / torch.maximum(vq, v1).sum()
    jaccard_g2 = 1.0  # R(g2) shares nothing with q's
    expected = [0.7 * float(jaccard_g1) + 0.3 / 3, 0.7 * jaccard_g2 + 0.3 * 1.0]
    assert out.shape == (1, 2)
    assert out[0].tolist() == pytest.approx(expected, rel=1e-9)


def reference_weights(dist: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """The definitions of ppa.eval.reranking written out with sets and loops."""
    n = len(dist)
    order = [sorted(range(n), key=lambda j, i=i: (float(dist[i, j]), j)) for i in range(n)]

    def reciprocal(i: int, k: int) -> set[int]:
        return {j for j in order[i][: k + 1] if i in order[j][: k + 1]}

    weights = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        own = reciprocal(i, k1)
        grown = set(own)
        for j in own:
            half = reciprocal(j, round(k1 / 2))
            if len(half & own) > 2 / 3 * len(half):
                grown |= half
        for j in grown:
            weights[i, j] = math.exp(-float(dist[i, j]))
        weights[i] /= weights[i].sum()
    if k2 > 1:
        weights = torch.stack([weights[order[i][:k2]].mean(0) for i in range(n)])
    return weights


@pytest.mark.parametrize("k1,k2", [(3, 1), (4, 3), (6, 2)])
def test_weights_match_the_readable_reference(k1: int, k2: int) -> None:
    gen = torch.Generator().manual_seed(k1 * 10 + k2)
    feats = torch.randn(14, 5, generator=gen, dtype=torch.float64)
    dist = pairwise_distance(feats, feats, "euclidean")
    dist = dist / dist.max(dim=1, keepdim=True).values
    fast = reciprocal_weights(dist, RerankSettings(k1=k1, k2=k2))
    assert torch.allclose(fast, reference_weights(dist, k1, k2), atol=1e-12)
    assert torch.allclose(fast.sum(dim=1), torch.ones(14, dtype=torch.float64))


def test_lambda_one_is_the_scaled_original_distance() -> None:
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(4, 6, generator=gen), torch.randn(9, 6, generator=gen)
    out = rerank_distance(q, g, RerankSettings(k1=3, k2=2, lam=1.0))
    full = pairwise_distance(torch.cat([q, g]).double(), torch.cat([q, g]).double())
    scaled = full.clamp_min(0) / full.clamp_min(0).max(dim=1, keepdim=True).values
    assert torch.allclose(out, scaled[:4, 4:], atol=1e-12)


def test_a_non_reciprocal_nearest_neighbour_is_pushed_down() -> None:
    """The query's nearest gallery image belongs to a tight cluster of another identity that
    does not count the query among its neighbours; its own identity's images do. Plain
    distance ranks the impostor first, re-ranking the true match."""
    query = torch.tensor([[0.0, 0.0]])
    gallery = torch.tensor(
        [
            [1.0, 0.0],  # impostor, id 1, nearest to the query
            [1.5, 0.1],  # id 1 cluster around (1.5, 0)
            [1.5, -0.1],
            [1.6, 0.0],
            [1.4, 0.0],
            [-1.1, 0.0],  # id 0: the query's identity, a loose group around it
            [0.0, 1.15],
            [0.0, -1.2],
        ]
    )
    pids = [1, 1, 1, 1, 1, 0, 0, 0]
    plain = pairwise_distance(query, gallery, "euclidean")
    assert pids[int(plain.argmin())] == 1
    out = rerank_distance(query, gallery, RerankSettings(k1=3, k2=1, lam=0.3), "euclidean")
    assert pids[int(out.argmin())] == 0
    # ... and the protocol's metrics see it: Rank-1 from 0 to 1.
    ids = (np.array([0]), np.array(pids), np.array([1]), np.array([4] * 8))
    assert sysu_metrics(plain, *ids, max_rank=1)["cmc"][0] == 0.0
    assert sysu_metrics(out, *ids, max_rank=1)["cmc"][0] == 1.0


@pytest.mark.parametrize("bad", [{"k1": 0}, {"k2": 0}, {"lam": 1.5}, {"lam": -0.1}])
def test_settings_refuse_out_of_range_values(bad: dict) -> None:
    with pytest.raises(ValueError, match=r"eval\.rerank"):
        RerankSettings(**bad)


def test_settings_from_config_default_off() -> None:
    cfg = load_config([])
    assert RerankSettings.from_config(cfg.eval) is None
    on = load_config(["eval.rerank.enabled=true", "eval.rerank.k1=7"])
    assert RerankSettings.from_config(on.eval) == RerankSettings(k1=7, k2=6, lam=0.3)


def test_evaluate_reports_reranked_numbers_apart(tiny_sysu_root: Path, tmp_path: Path) -> None:
    """evaluate with eval.rerank on: the plain results unchanged, the re-ranked ones equal to
    the protocol's metrics on re-ranked distances of features computed here by hand."""
    cfg = load_config(tiny_overrides(tiny_sysu_root, tmp_path, "dataset.test.trials=1"))
    torch.manual_seed(0)
    net = create_model(cfg.model, protocols.load_train_set(cfg.dataset).num_classes).eval()
    device = DeviceSettings.from_config(cfg)
    plain = evaluate(net, cfg, device=device, protocols=["raw-raw"], progress=False)
    on = OmegaConf.merge(cfg, {"eval": {"rerank": {"enabled": True, "k1": 5, "k2": 2}}})
    report = evaluate(net, on, device=device, protocols=["raw-raw"], progress=False)
    assert plain.reranked is None
    assert report.results == plain.results
    assert report.reranked is not None

    setting = protocols.test_settings(cfg.dataset)[0]
    records = [*setting.split.query, *setting.split.gallery]
    loader = create_eval_loader(
        records,
        setting.split.root,
        input_cfg=cfg.input,
        batch_size=16,
        num_workers=0,
        pose_cfg=cfg.pose,
        keypoints=None,
    )
    mean, std = tuple(cfg.input.mean), tuple(cfg.input.std)
    with torch.no_grad():
        feats = torch.cat([net(normalize(b.images, mean, std), b.modality).neck for b in loader])
    nq = len(setting.split.query)
    dist = rerank_distance(feats[:nq], feats[nq:], RerankSettings(k1=5, k2=2))
    expected = sysu_metrics(
        dist,
        np.array([r.pid for r in setting.split.query]),
        np.array([r.pid for r in setting.split.gallery]),
        np.array([r.cam for r in setting.split.query]),
        np.array([r.cam for r in setting.split.gallery]),
    )
    got = report.reranked["raw-raw"]["all"].trials[0]
    assert got["mAP"] == pytest.approx(float(expected["mAP"]), abs=1e-6)
    assert got["rank1"] == pytest.approx(float(expected["cmc"][0]), abs=1e-6)
    assert got["mAP"] != pytest.approx(plain.results["raw-raw"]["all"].trials[0]["mAP"], abs=1e-4)
