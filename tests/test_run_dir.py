"""Run folders on disk: every run and evaluation its own folder, `latest` follows the newest,
resume continues it, a Hydra sweep gives each job a folder (ppa/run_dir.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ppa.config import load_config
from ppa.run_dir import (
    checkpoint_run_dir,
    claim_run_dir,
    evaluation_dir,
    latest_run,
    point_latest,
)

from conftest import REPO, tiny_overrides


def _cfg(tmp_path: Path, *extra: str):
    return load_config([f"output_root={tmp_path / 'outputs' / 'demo'}", *extra])


def test_default_output_dir_is_a_dated_folder_under_the_run_name() -> None:
    cfg = load_config(["run_name=abc"])
    assert cfg.output_root == "outputs/abc"
    parent, stamp = str(cfg.output_dir).rsplit("/", 1)
    assert parent == "outputs/abc"
    assert len(stamp) == len("20261202-153000") and stamp[8] == "-"
    assert cfg.output_dir == cfg.output_dir  # resolved once per composed config


def test_each_run_gets_its_own_folder_and_latest_follows(tmp_path: Path) -> None:
    root = tmp_path / "outputs" / "demo"
    first = claim_run_dir(_cfg(tmp_path, f"output_dir={root / '20260101-000000'}"))
    (first / "history.json").write_text('{"run": 1}')
    assert (root / "latest").is_symlink() and latest_run(root) == first
    assert os.readlink(root / "latest") == first.name  # relative: the folder can move

    second = claim_run_dir(_cfg(tmp_path, f"output_dir={root / '20260101-000100'}"))
    (second / "history.json").write_text('{"run": 2}')
    assert second != first and latest_run(root) == second
    assert json.loads((first / "history.json").read_text()) == {"run": 1}
    assert json.loads((root / "latest" / "history.json").read_text()) == {"run": 2}


def test_resume_continues_the_newest_run(tmp_path: Path) -> None:
    root = tmp_path / "outputs" / "demo"
    previous = claim_run_dir(_cfg(tmp_path, f"output_dir={root / '20260101-000000'}"))
    cfg = _cfg(tmp_path, f"output_dir={root / '20260101-000500'}")
    assert claim_run_dir(cfg, resume=True) == previous
    assert cfg.output_dir == str(previous)
    assert not (root / "20260101-000500").exists()
    # Without an earlier run, resume starts the fresh folder.
    other = tmp_path / "outputs" / "other"
    fresh = claim_run_dir(
        load_config([f"output_root={other}", f"output_dir={other / 'x'}"]), resume=True
    )
    assert fresh == other / "x" and latest_run(other) == fresh


def test_an_explicit_folder_elsewhere_gets_no_pointer(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, f"output_dir={tmp_path / 'mine'}")
    assert claim_run_dir(cfg) == tmp_path / "mine"
    assert not (tmp_path / "outputs" / "demo" / "latest").exists()
    with pytest.raises(ValueError, match="not a folder directly under"):
        point_latest(tmp_path / "mine", tmp_path / "outputs")


def test_evaluations_land_in_the_checkpoints_run_and_never_overwrite(tmp_path: Path) -> None:
    run_a = tmp_path / "outputs" / "demo" / "20260101-000000"
    run_b = tmp_path / "outputs" / "demo" / "20260101-000100"
    (run_a / "checkpoints").mkdir(parents=True)
    run_b.mkdir(parents=True)
    last = run_a / "checkpoints" / "last.pt"
    model = run_b / "model_latest.pt"
    assert checkpoint_run_dir(last) == run_a and checkpoint_run_dir(model) == run_b
    # Through the `latest` pointer the real run is meant.
    point_latest(run_b, run_b.parent)
    assert checkpoint_run_dir(run_b.parent / "latest" / "model_latest.pt") == run_b

    first = evaluation_dir(last)
    second = evaluation_dir(last)
    assert first.parent == second.parent == run_a / "evaluate"
    assert first != second and first.name.startswith("last-")
    assert latest_run(run_a / "evaluate") == second
    assert evaluation_dir(model).parent == run_b / "evaluate"
    named = evaluation_dir(last, tmp_path / "elsewhere")
    assert named == tmp_path / "elsewhere" and named.is_dir()


@pytest.mark.slow
def test_a_hydra_sweep_gives_every_job_its_own_folder(tiny_sysu_root: Path, tmp_path: Path) -> None:
    """`train_central.py -m ppa=baseline,full`: two jobs, two checkpoints, nothing shared."""
    overrides = [
        o
        for o in tiny_overrides(
            tiny_sysu_root, tmp_path, "train.epochs=1", "train.max_batches_per_epoch=1"
        )
        if not o.startswith("output_dir=")
    ]
    root = tmp_path / "outputs" / "sweep"
    env = dict(os.environ, PPA_WORKDIR=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "train_central.py"),
            "-m",
            "ppa=baseline,full",
            f"output_root={root}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = [p for p in root.iterdir() if p.is_dir()]  # one dated sweep folder
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    methods = set()
    for job in jobs:
        last = sweep / job / "checkpoints" / "last.pt"
        assert last.is_file()
        import torch

        methods.add(torch.load(last, weights_only=False)["config"]["ppa"]["name"])
        assert (sweep / job / "train_history.json").is_file()
        assert "ppa=" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
    assert methods == {"baseline", "full"}
