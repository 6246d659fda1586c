"""Plain `flwr run .` as a Flower user types it, on Flower's own `:local:` SuperLink.

Flower's default federation has 2 simulated SuperNodes while the demo partition has 6 sites:
the run must stop at round 1 with an error naming the fix and a failed status in `flwr ls`,
record no round 1, and the same command with the federation config the error names must train.
Both runs share one detached SuperLink, stopped by PID afterwards (tests/flower_local.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_overrides
from flower_local import LocalFlower, processes_with

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FIX = 'flwr run . --federation-config "num-supernodes=6"'


@pytest.fixture(scope="module")
def flower(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("flwr_run")
    local = LocalFlower(base / "flwr-home", base / "work")
    yield local
    killed = local.stop()
    assert not processes_with(str(local.home)), "Flower processes left running"
    assert not killed, f"had to kill {killed}"


def overrides(root: Path, output_root: Path) -> str:
    tiny = [
        o
        for o in tiny_overrides(
            root,
            output_root,
            "federation.rounds=1",
            "train.max_batches_per_epoch=1",
            "dataset.test.trials=1",
            "federation.calibrate_norm_statistics=false",
        )
        if not o.startswith(("output_dir=", "dataset.test.trials=2"))
    ]
    return " ".join([*tiny, f"output_root={output_root}"])


def test_default_federation_stops_at_round_one_with_the_fix(
    flower: LocalFlower, tiny_sysu_root: Path
) -> None:
    out = flower.workdir / "outputs" / "two_nodes"
    run_id, proc = flower.run("--run-config", f"overrides='{overrides(tiny_sysu_root, out)}'")
    log = proc.stdout + proc.stderr
    run = flower.status(run_id)
    assert run["status"] == "finished:failed", run["status"]
    details = run["status-details"]
    assert "round 1/1" in details and "none of the 2 sampled site(s)" in details
    assert FIX in details and "2 site(s): the partition has 6 sites" in details
    assert "Traceback" not in details.split("Reasons:")[1]  # the cause, not Ray's traceback
    assert "round 1/1 done" not in log
    # Round 0 (the untrained model) is recorded; round 1 is not, and has no checkpoint.
    run_dir = (out / "latest").resolve()
    history = json.loads((run_dir / "history.json").read_text())["rounds"]
    assert [r["round"] for r in history] == [0]
    assert not list((run_dir / "checkpoints").glob("round_*.pt"))


def test_the_named_federation_config_trains(flower: LocalFlower, tiny_sysu_root: Path) -> None:
    out = flower.workdir / "outputs" / "six_nodes"
    run_id, proc = flower.run(
        "--federation-config",
        "num-supernodes=6",
        "--run-config",
        f"overrides='{overrides(tiny_sysu_root, out)}'",
    )
    assert flower.status(run_id)["status"] == "finished:completed"
    assert "round 1/1" in proc.stdout + proc.stderr
    run_dir = (out / "latest").resolve()
    assert run_dir.parent == out and run_dir.name[:8].isdigit()
    history = json.loads((run_dir / "history.json").read_text())["rounds"]
    assert [r["round"] for r in history] == [0, 1]
    assert sorted(history[1]["replied"]) == [f"cam{i}" for i in range(1, 7)]
    assert (run_dir / "model_latest.pt").is_file()
