"""Server checkpoints: atomic, pruned, pointer always names a complete file; model checkpoints."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ppa.checkpoint import CheckpointError, model_from_checkpoint, save_checkpoint
from ppa.config import load_config
from ppa.model import create_model
from server.checkpoints import CheckpointStore, ServerCheckpoint, capture_rng, restore_rng


def ckpt(server_round: int) -> ServerCheckpoint:
    return ServerCheckpoint(
        server_round=server_round,
        arrays={"w": np.full(3, float(server_round), np.float32)},
        strategy={"rng": random.Random(server_round).getstate()},
        history=[{"round": r} for r in range(server_round + 1)],
    )


def test_store_saves_prunes_and_loads_latest(tmp_path) -> None:
    store = CheckpointStore(tmp_path / "ck", keep=2)
    assert store.load_latest() is None
    for r in (1, 2, 3):
        store.save(ckpt(r))
    assert sorted(p.name for p in (tmp_path / "ck").glob("round_*.pt")) == [
        "round_0002.pt",
        "round_0003.pt",
    ]
    latest = store.load_latest()
    assert latest.server_round == 3
    assert latest.arrays["w"].tolist() == [3.0, 3.0, 3.0]
    assert [h["round"] for h in latest.history] == [0, 1, 2, 3]
    assert not list((tmp_path / "ck").glob("*.tmp"))


def test_interrupted_write_leaves_previous_checkpoint(tmp_path, monkeypatch) -> None:
    store = CheckpointStore(tmp_path / "ck")
    store.save(ckpt(1))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save(ckpt(2))
    monkeypatch.undo()
    assert store.load_latest().server_round == 1
    assert not list((tmp_path / "ck").glob(".*.tmp"))


def test_foreign_or_broken_files_are_refused(tmp_path) -> None:
    store = CheckpointStore(tmp_path / "ck")
    store.save(ckpt(1))
    (tmp_path / "ck" / "latest").write_text("round_0009.pt\n")
    with pytest.raises(CheckpointError, match=r"round_0009\.pt"):
        store.load_latest()
    (tmp_path / "ck" / "round_0009.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        store.load_latest()


def test_rng_capture_restores_all_generators() -> None:
    state = capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_model_checkpoint_round_trip_and_wrong_model(tmp_path) -> None:
    cfg = load_config(["model=tiny"])
    model = create_model(cfg.model, 5)
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, epoch=2)
    loaded, payload = model_from_checkpoint(path)
    assert payload["epoch"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    other = load_config(["model=resnet18", "model.pretrained=false"])
    with pytest.raises(CheckpointError, match=r"model\.arch_kwargs"):
        model_from_checkpoint(path, expected_model=other.model)
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a PPA model checkpoint"):
        model_from_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        model_from_checkpoint(tmp_path / "absent.pt")
