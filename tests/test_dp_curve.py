"""The privacy-utility curve (ppa/dp/curve.py, ppa-privacy-curve): runs planned per
(epsilon, seed), the table and the plot from the runs' histories, and the command end to end
on the tiny set (slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ppa.cli.train import train
from ppa.config import load_config
from ppa.dp.curve import (
    markdown_table,
    parse_epsilon,
    plan_points,
    plot_curve,
    point_overrides,
    summarise,
)
from ppa.synthetic.writer import write_synthetic_sysu

from conftest import tiny_overrides


def _history(path: Path, start: tuple[float, float], final: tuple[float, float], eps: float | None):
    def central(raw: float, anon: float) -> dict:
        return {"raw-raw": {"mAP": raw, "rank1": 0.0}, "anon-anon": {"mAP": anon, "rank1": 0.0}}

    sites = {} if eps is None else {"cam1": {"epsilon": eps - 0.1}, "cam3": {"epsilon": eps}}
    path.mkdir(parents=True)
    rounds = [
        {"round": 0, "central": central(*start)},
        {"round": 1, "sites": sites},
        {"round": 2, "sites": sites, "central": central(*final)},
    ]
    (path / "history.json").write_text(json.dumps({"rounds": rounds}))


def test_points_and_their_overrides(tmp_path: Path) -> None:
    assert parse_epsilon("inf") == parse_epsilon(None) == math.inf and parse_epsilon(2) == 2.0
    with pytest.raises(ValueError, match="not a positive epsilon"):
        parse_epsilon(0)
    points = plan_points([2, "inf"], [0, 1], tmp_path)
    assert [(p.label, p.seed) for p in points] == [("2", 0), ("2", 1), ("inf", 0), ("inf", 1)]
    assert points[1].output_dir == tmp_path / "eps_2" / "seed_1"
    dp = point_overrides(points[0], shared=["a=1"], private=["privacy=dp_finetune"], public=["p"])
    assert dp == [
        "a=1",
        "seed=0",
        f"output_dir={tmp_path / 'eps_2' / 'seed_0'}",
        "privacy=dp_finetune",
        "privacy.epsilon_budget=2",
    ]
    assert point_overrides(points[2], shared=[], private=["x"], public=["privacy=none"])[-1] == (
        "privacy=none"
    )


def test_the_norms_curve_swaps_only_the_dp_recipe() -> None:
    """privacy_curve=norms: its finite epsilons compose privacy=dp_finetune_norms at its own
    rate; the inf point is the default curve's non-DP reference, unchanged."""
    default = load_config([]).privacy_curve
    norms = load_config(["privacy_curve=norms"]).privacy_curve
    assert list(norms.public) == list(default.public)
    assert norms.output_dir != default.output_dir
    run = load_config([*norms.private, "privacy.epsilon_budget=8"])
    assert run.privacy.name == "dp_finetune_norms" and run.privacy.enabled
    assert run.train.optimizer.lr_backbone == pytest.approx(0.5)
    assert list(run.privacy.finetune.train) == [] and run.privacy.max_grad_norm == 0.1


def test_table_and_plot_from_histories(tmp_path: Path) -> None:
    points = plan_points([2, "inf"], [0, 1], tmp_path)
    _history(points[0].output_dir, (0.10, 0.08), (0.12, 0.10), 1.99)
    _history(points[1].output_dir, (0.10, 0.08), (0.14, 0.12), 1.98)
    _history(points[2].output_dir, (0.10, 0.08), (0.30, 0.20), None)
    _history(points[3].output_dir, (0.10, 0.08), (0.10, 0.20), None)
    rows = summarise(points)
    dp, ref = rows
    assert dp["epsilon"] == 2.0 and math.isinf(ref["epsilon"])
    assert dp["raw-raw"] == pytest.approx((0.13, 0.01))
    assert dp["anon-anon"] == pytest.approx((0.11, 0.01))
    assert ref["raw-raw"] == pytest.approx((0.20, 0.10))
    assert dp["of non-DP"] == pytest.approx(0.13 / 0.20)
    assert dp["epsilon_spent"] == pytest.approx(1.99) and ref["epsilon_spent"] is None
    assert dp["start raw-raw"] == pytest.approx(0.10) and dp["round"] == 2
    table = markdown_table(rows)
    assert "| 2 | 1.99 | 2 | 2 | 13.00 ± 1.00 | 11.00 ± 1.00 | 65 % | 10.00 / 8.00 |" in table
    assert "| inf (no DP) | - | 2 | 2 | 20.00 ± 10.00 |" in table
    png = plot_curve(rows, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError, match=r"no history\.json"):
        summarise(plan_points([4], [0], tmp_path))


@pytest.mark.slow
@pytest.mark.integration
def test_the_curve_command_runs_end_to_end(tiny_sysu_root: Path, tmp_path: Path) -> None:
    public = tmp_path / "public"
    write_synthetic_sysu(
        public,
        num_train_ids=8,
        num_val_ids=1,
        num_test_ids=1,
        images_per_camera=1,
        image_height=64,
        image_width=32,
        camera_coverage=0.9,
        seed=1000,
    )
    start = train(
        load_config(
            tiny_overrides(public, tmp_path / "pre", "train.epochs=1", "train.checkpoint_every=0")
        )
    )
    shared = [
        o for o in tiny_overrides(tiny_sysu_root, tmp_path) if not o.startswith("output_dir=")
    ]
    shared += [
        "train.max_batches_per_epoch=2",
        "federation.calibrate_norm_statistics=false",
        "++privacy.batch_size=8",  # ++: privacy=none (the inf point) has no such key
    ]
    quoted = ",".join(f'"{o}"' for o in shared)  # list items holding "=" are quoted for Hydra
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ppa-privacy-curve"),
            f"privacy_curve.start={start}",
            f"privacy_curve.output_dir={tmp_path / 'curve'}",
            "privacy_curve.epsilons=[8,inf]",
            "privacy_curve.rounds=1",
            "privacy_curve.timeout=1200",
            f"privacy_curve.overrides=[{quoted}]",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        capture_output=True,
        text=True,
        timeout=3000,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    table = Path(done.stdout.strip().splitlines()[-1])  # the last line printed: curve.md
    assert table == tmp_path / "curve" / "curve.md"
    rows = json.loads((tmp_path / "curve" / "curve.json").read_text())
    assert [r["epsilon"] for r in rows] == [8.0, math.inf]
    assert 0 < rows[0]["epsilon_spent"] <= 8.0
    assert rows[0]["start raw-raw"] == pytest.approx(rows[1]["start raw-raw"])  # same start
    assert "| 8 |" in table.read_text() and (tmp_path / "curve" / "curve.png").is_file()
