"""SCAFFOLD's control variates on quadratics, where the answers are known in closed form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flower_messages import reply_message
from flwr.app import RecordDict
from torch import nn

from client.app import train_reply
from client.site import SITE_CONTROL, SiteTrainer
from ppa.config import load_config
from ppa.data.protocols import load_label_space
from ppa.model import create_model
from ppa.node_config import SiteSpec
from ppa.training.scaffold import ControlledRound, ControlVariateError, control_keys
from ppa.wire import CONTROL_DELTA, MalformedUpdateError, global_keys, pack, site_keys
from server.control_variates import GlobalControlVariate
from server.run import build_strategy

from conftest import tiny_overrides


class Point(nn.Module):
    """One shared parameter vector `w` and one infrared stem parameter (a modality group)."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.stems = nn.ModuleDict({"infrared": nn.Linear(1, 1, bias=False)})


def quadratic(model: Point, curvature: torch.Tensor, optimum: torch.Tensor) -> torch.Tensor:
    return 0.5 * (curvature * (model.w - optimum) ** 2).sum()


def local_round(
    model: Point,
    curvature: torch.Tensor,
    optimum: torch.Tensor,
    *,
    steps: int,
    lr: float,
    momentum: float = 0.0,
    global_control=None,
    site_control=None,
    scaffold: bool = True,
):
    opt = torch.optim.SGD([{"params": [model.w], "lr": lr}], momentum=momentum)
    rnd = (
        ControlledRound.attach(model, opt, ["w"], global_control, site_control)
        if scaffold
        else None
    )
    for _ in range(steps):
        opt.zero_grad()
        quadratic(model, curvature, optimum).backward()
        opt.step()
    return rnd.finish() if rnd is not None else None


def test_control_keys_are_the_trainable_parameters_only():
    model = nn.BatchNorm1d(3)
    model.bias.requires_grad_(False)
    keys = list(model.state_dict())
    assert control_keys(model, keys) == ["weight"]


def test_one_step_uses_the_corrected_gradient_and_option_two_recovers_the_local_gradient():
    x = torch.tensor([1.0, -2.0])
    a, b = torch.tensor([2.0, 0.5]), torch.tensor([3.0, 1.0])
    c = {"w": np.array([0.3, -0.1], np.float32)}
    ci = {"w": np.array([0.1, 0.2], np.float32)}
    model = Point(x)
    new, delta = local_round(model, a, b, steps=1, lr=0.1, global_control=c, site_control=ci)
    gradient = a * (x - b)
    corrected = gradient + torch.tensor(c["w"]) - torch.tensor(ci["w"])
    assert torch.allclose(model.w.detach(), x - 0.1 * corrected)
    # c_i+ = c_i - c + (x - y) / lr = the local gradient at x (one plain SGD step).
    np.testing.assert_allclose(new["w"], gradient.numpy(), rtol=1e-6)
    np.testing.assert_allclose(delta["w"], gradient.numpy() - ci["w"], rtol=1e-6)
    # The hook is gone: a later backward sees the plain gradient.
    model.w.grad = None
    quadratic(model, a, b).backward()
    assert torch.allclose(model.w.grad, a * (model.w.detach() - b))


def test_momentum_and_the_lr_schedule_enter_the_step_size_sum():
    # A linear loss has a constant gradient g; torch's momentum buffer after step k (1-based)
    # is g (1 - beta^k) / (1 - beta), so after K steps with learning rates lr_k the site has
    # moved g * sum_k lr_k (1 - beta^k) / (1 - beta). Option II divides by
    # sum_k lr_k / (1 - beta) and recovers g up to the momentum ramp-up.
    model = Point(torch.zeros(2))
    g = torch.tensor([1.0, -3.0])
    opt = torch.optim.SGD([{"params": [model.w], "lr": 0.1}], momentum=0.5)
    rnd = ControlledRound.attach(model, opt, ["w"], None, None)
    lrs = [0.1, 0.2, 0.2, 0.05]
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        (g * model.w).sum().backward()
        opt.step()
    new, _ = rnd.finish()
    moved = sum(lr * (1 - 0.5 ** (k + 1)) / (1 - 0.5) for k, lr in enumerate(lrs))
    expected = g.numpy() * moved / (sum(lrs) / (1 - 0.5))
    np.testing.assert_allclose(new["w"], expected, rtol=1e-5)


def test_scaffold_removes_the_drift_fedavg_keeps_on_a_heterogeneous_quadratic():
    # Two sites with different curvature: the federation's optimum is the weighted mean of the
    # optima weighted by curvature x images; FedAvg with many local steps lands near the plain
    # mean of the site optima instead. SCAFFOLD's corrected steps converge to the true optimum.
    curv = [torch.tensor([4.0, 1.0]), torch.tensor([0.5, 2.0])]
    optima = [torch.tensor([2.0, -1.0]), torch.tensor([-3.0, 4.0])]
    images = [3.0, 1.0]
    weights = np.array(images) / sum(images)
    truth = sum(w * a * b for w, a, b in zip(weights, curv, optima, strict=True)) / sum(
        w * a for w, a in zip(weights, curv, strict=True)
    )

    def federate(scaffold: bool) -> torch.Tensor:
        x = torch.zeros(2)
        server = GlobalControlVariate({"w": np.zeros(2, np.float32)}, ["w"])
        site_controls: list[dict | None] = [None, None]
        for _ in range(100):
            updates, deltas = [], []
            for i in range(2):
                model = Point(x)
                out = local_round(
                    model,
                    curv[i],
                    optima[i],
                    steps=20,
                    lr=0.05,
                    global_control=server.arrays() if scaffold else None,
                    site_control=site_controls[i],
                    scaffold=scaffold,
                )
                if out is not None:
                    site_controls[i], delta = out
                    deltas.append(delta)
                updates.append(model.w.detach())
            x = sum(w * u for w, u in zip(weights, updates, strict=True))
            if scaffold:
                server.update(["a", "b"], deltas, images)
        return x

    fedavg, scaffold = federate(False), federate(True)
    assert torch.allclose(scaffold, truth, atol=1e-4), (scaffold, truth)
    # FedAvg's fixed point: a round maps x to b_i + r_i (x - b_i) at site i, r_i = (1 - lr a_i)^K.
    r = [(1 - 0.05 * a) ** 20 for a in curv]
    fixed = sum(w * (1 - ri) * b for w, ri, b in zip(weights, r, optima, strict=True)) / sum(
        w * (1 - ri) for w, ri in zip(weights, r, strict=True)
    )
    assert torch.allclose(fedavg, fixed, atol=1e-4), (fedavg, fixed)
    assert (fedavg - truth).abs().max() > 0.3, (fedavg, truth)


def test_global_control_variate_update_weights_and_partial_participation():
    ref = {
        "trunk.w": np.zeros(2, np.float32),
        "stems.infrared.w": np.zeros(1, np.float32),
        "stems.visible.w": np.zeros(1, np.float32),
    }
    server = GlobalControlVariate(ref, list(ref))
    d_vis = {"trunk.w": np.array([1.0, 2.0], np.float32), "stems.visible.w": np.array([4.0])}
    d_ir = {"trunk.w": np.array([3.0, 0.0], np.float32), "stems.infrared.w": np.array([-2.0])}
    server.update(["v1", "i1"], [d_vis, d_ir], [3.0, 1.0])
    # Shared: weighted mean (3/4, 1/4), both holders seen -> share 1.
    np.testing.assert_allclose(server.control["trunk.w"], [1.5, 1.5])
    # Stems: within the modality only.
    np.testing.assert_allclose(server.control["stems.visible.w"], [4.0])
    np.testing.assert_allclose(server.control["stems.infrared.w"], [-2.0])
    # Next round only v1 of the three shared holders takes part (v2 was seen as well): share 1/3.
    server.seen["shared"].add("v2")
    server.update(["v1"], [{"trunk.w": np.array([3.0, 3.0], np.float32)}], [3.0])
    np.testing.assert_allclose(server.control["trunk.w"], [2.5, 2.5])
    np.testing.assert_allclose(server.control["stems.infrared.w"], [-2.0])
    restored = GlobalControlVariate(ref, list(ref))
    restored.load_state_dict(server.state_dict())
    np.testing.assert_allclose(restored.control["trunk.w"], [2.5, 2.5])
    assert restored.seen == server.seen


def test_malformed_control_deltas_are_refused_with_the_site_named():
    ref = {"trunk.w": np.zeros(2, np.float32), "neck.bn.running_mean": np.zeros(2, np.float32)}
    server = GlobalControlVariate(ref, ["trunk.w"])
    expected = ["trunk.w", "neck.bn.running_mean"]
    server.validate({"trunk.w": np.ones(2, np.float32)}, expected, "cam1")
    with pytest.raises(MalformedUpdateError, match=r"cam1.*missing"):
        server.validate({}, expected, "cam1")
    with pytest.raises(MalformedUpdateError, match="shape"):
        server.validate({"trunk.w": np.ones(3, np.float32)}, expected, "cam1")
    with pytest.raises(MalformedUpdateError, match="finite"):
        server.validate({"trunk.w": np.array([np.nan, 0], np.float32)}, expected, "cam1")


def test_a_control_variate_of_the_wrong_shape_is_refused_at_the_site():
    model = Point(torch.zeros(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ControlVariateError, match="'w'"):
        ControlledRound.attach(model, opt, ["w"], {"w": np.zeros(3, np.float32)}, None)


def test_sites_and_server_run_scaffold_rounds_on_real_messages(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    cfg = load_config(
        tiny_overrides(
            tiny_sysu_root, tmp_path, "federation.scaffold=true", "train.max_batches_per_epoch=2"
        )
    )
    torch.manual_seed(0)
    model = create_model(cfg.model, len(load_label_space(cfg.dataset)))
    strategy = build_strategy(cfg, model)
    assert strategy.control is not None
    state = model.state_dict()
    arrays = pack(state, global_keys(state))
    sites = {
        1: SiteTrainer(cfg, SiteSpec(None, None, None, 0, 6)),  # cam1, visible
        2: SiteTrainer(cfg, SiteSpec(None, None, None, 2, 6)),
    }  # cam3, infrared
    states = {node: RecordDict() for node in sites}
    previous: dict[int, dict[str, np.ndarray]] = {}
    for server_round in (1, 2):
        control = strategy.control.arrays()
        before = {k: v.copy() for k, v in control.items()}
        replies, deltas, weights = [], [], []
        for node, trainer in sites.items():
            result = trainer.train_round(
                arrays,
                None,
                server_round=server_round,
                local_epochs=1,
                half_precision=False,
                state=states[node],
                control=control,
            )
            keys = control_keys(
                trainer.model, site_keys(trainer.model.state_dict(), trainer.site.modality)
            )
            assert sorted(result.control_delta) == sorted(keys)
            kept = {k: v.numpy() for k, v in states[node][SITE_CONTROL].items()}
            old = previous.get(node, {k: np.zeros_like(v) for k, v in kept.items()})
            for k in keys:  # the site keeps c_i+ and sends c_i+ - c_i
                np.testing.assert_allclose(result.control_delta[k], kept[k] - old[k], atol=1e-6)
            previous[node] = kept
            deltas.append(result.control_delta)
            weights.append(result.metrics["num-examples"])
            content = train_reply(
                result,
                site=trainer.site.name,
                modality=trainer.site.modality.value,
                send_prototypes=True,
            )
            assert CONTROL_DELTA in content.array_records
            replies.append(reply_message(node, content))
        record, _ = strategy.aggregate_train(server_round, replies)
        assert record is not None and strategy.last_report.failed == []
        arrays = {k: v.numpy() for k, v in record.items()}
        # Shared parameters: c moved by the examples-weighted mean of both sites' deltas.
        shared = next(k for k in deltas[0] if k.startswith("trunk") and k in deltas[1])
        expected = before[shared] + sum(
            w / sum(weights) * d[shared] for w, d in zip(weights, deltas, strict=True)
        )
        np.testing.assert_allclose(strategy.control.control[shared], expected, atol=1e-6)
        # A stem: only its own modality's site.
        stem = next(k for k in deltas[0] if k.startswith("stems."))
        np.testing.assert_allclose(
            strategy.control.control[stem], before[stem] + deltas[0][stem], atol=1e-6
        )
    # A reply without the control-variate deltas is dropped, the site named.
    content = train_reply(result, site="cam3", modality="infrared", send_prototypes=False)
    del content[CONTROL_DELTA]
    record, _ = strategy.aggregate_train(3, [reply_message(2, content)])
    assert record is None and "control-delta" in strategy.last_report.failed[0]


def test_scaffold_is_refused_under_dp(tiny_sysu_root: Path, tmp_path: Path) -> None:
    cfg = load_config(
        tiny_overrides(tiny_sysu_root, tmp_path, "federation.scaffold=true", "privacy=dp")
    )
    model = create_model(cfg.model, len(load_label_space(cfg.dataset)))
    with pytest.raises(ValueError, match=r"scaffold.*DP"):
        build_strategy(cfg, model)
