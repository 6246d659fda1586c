"""The federated-vs-centralised comparison: table arithmetic, the plan, and a tiny real run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from ppa.cli import compare as compare_fed_central
from ppa.compare.plan import ComparisonConfigError, Job, eval_epochs, plan_jobs
from ppa.compare.runner import run_jobs
from ppa.compare.table import RunResult, markdown, summarise
from ppa.config import load_config

from conftest import tiny_overrides


def _numbers(m: float) -> dict:
    return {"raw-raw": {"mAP": m, "rank1": m / 2, "mINP": m / 4}}


def test_table_means_spreads_and_ratio_by_hand():
    results = [
        RunResult("federated", 16, 0, {8: _numbers(0.1), 16: _numbers(0.4)}),
        RunResult("federated", 16, 1, {16: _numbers(0.6)}),
        RunResult("centralised", 16, 0, {16: _numbers(0.8)}),
        RunResult("centralised", 16, 1, {16: _numbers(0.5)}),
    ]
    table = summarise(results, ["raw-raw"])
    cell = table["budgets"]["16"]["raw-raw"]
    assert cell["federated"]["mAP"] == pytest.approx([0.5, 0.02**0.5])
    assert cell["centralised"]["mAP"] == pytest.approx([0.65, 0.045**0.5])
    assert cell["ratio"]["mAP"]["of_means"] == pytest.approx(0.5 / 0.65)
    # Per-seed ratios 0.5 and 1.2: mean 0.85, sample std 0.7 / sqrt(2).
    assert cell["ratio"]["mAP"]["per_seed"] == pytest.approx([0.85, 0.7 / 2**0.5])
    text = markdown(table, ["raw-raw"])
    assert "| 16 | federated | 50.00 ± 14.14 / 25.00 ± 7.07 / 12.50 ± 3.54 |" in text
    assert "| 16 | **federated / centralised** | 0.77 / 0.77 / 0.77 |" in text


def test_plan_gives_both_sides_the_same_epochs_seed_and_schedule(tmp_path: Path):
    cfg = load_config(["experiment=demo", "compare.seeds=[3]", "compare.epochs=[16,32]"])
    jobs = plan_jobs(cfg, ["ppa.weights.align=1.0", "seed=9"], tmp_path, python="py")
    assert [j.name for j in jobs] == [
        "fed_e16_s3",
        "central_e16_s3",
        "fed_e32_s3",
        "central_e32_s3",
    ]
    fed, central = jobs[2], jobs[3]
    assert "federation.rounds=32" in fed.command  # 32 epochs of 1 local epoch
    assert "train.epochs=32" in central.command
    for job in (fed, central):
        assert job.command[-1] == f"output_dir={job.output_dir}"
        assert "train.lr_steps=[24]" in job.command and "ppa.weights.align=1.0" in job.command
        # the plan's seed comes after the user's, so it wins
        assert job.command.index("seed=3") > job.command.index("seed=9")
        assert job.eval_epochs == (8, 16, 24, 32)
    assert eval_epochs(10, 4, 2) == (4, 8, 10)
    with pytest.raises(ComparisonConfigError, match="local_epochs"):
        eval_epochs(16, 3, 2)
    odd = load_config(["experiment=demo", "federation.local_epochs=2", "compare.epochs=[15]"])
    with pytest.raises(ComparisonConfigError, match="not a multiple"):
        plan_jobs(odd, [], tmp_path)


@pytest.mark.integration
def test_comparison_runs_both_sides_and_writes_the_table(tiny_sysu_root: Path, tmp_path: Path):
    overrides = [
        o
        for o in tiny_overrides(tiny_sysu_root, tmp_path, "train.max_batches_per_epoch=2")
        if not o.startswith(("output_dir=", "federation.evaluate_every="))
    ]
    code = compare_fed_central.main(
        [
            *overrides,
            "compare.seeds=[0]",
            "compare.epochs=[2]",
            "compare.eval_every_epochs=1",
            "compare.protocols=[raw-raw]",
            f"compare.output_dir={tmp_path / 'cmp'}",
        ]
    )
    assert code == 0
    payload = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    runs = {r["side"]: r for r in payload["runs"]}
    assert set(runs) == {"federated", "centralised"}
    for run in runs.values():
        assert sorted(run["curve"]) == ["1", "2"]
        assert 0.0 < run["curve"]["2"]["raw-raw"]["mAP"] <= 1.0
    cell = payload["table"]["budgets"]["2"]["raw-raw"]
    fed, cen = runs["federated"]["curve"]["2"], runs["centralised"]["curve"]["2"]
    assert cell["ratio"]["mAP"]["of_means"] == pytest.approx(
        fed["raw-raw"]["mAP"] / cen["raw-raw"]["mAP"]
    )
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0
    assert "federated / centralised" in (tmp_path / "cmp" / "comparison.md").read_text()


def _job(seed: int, tmp_path: Path, code: str) -> Job:
    return Job("centralised", 1, seed, tmp_path / str(seed), (sys.executable, "-c", code), (1,))


@pytest.mark.parametrize("parallel", [1, 2])
def test_each_job_gets_its_share_of_the_cores(
    parallel: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PPA_CPU_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    show = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['PPA_CPU_THREADS'])"
    jobs = [_job(seed, tmp_path, show) for seed in range(2)]
    done = run_jobs(jobs, parallel=parallel, timeout=60, log_dir=tmp_path, cwd=tmp_path)
    assert [f.returncode for f in done] == [0, 0]
    share = str(max(1, len(os.sched_getaffinity(0)) // parallel))
    for finished in done:
        assert finished.log.read_text().split() == [share, share]


def test_a_chosen_thread_count_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPA_CPU_THREADS", "3")
    show = "import os; print(os.environ['PPA_CPU_THREADS'])"
    (done,) = run_jobs(
        [_job(0, tmp_path, show)],
        parallel=2,
        timeout=60,
        log_dir=tmp_path,
        cwd=tmp_path,
    )
    assert done.log.read_text().split() == ["3"]
