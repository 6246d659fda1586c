"""RegDB per trial: one model per trial, each tested on its own trial; mean and spread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ppa.cli import regdb_trials
from ppa.config import load_config
from ppa.trial_summary import spread, summarize_reports

from conftest import tiny_overrides


def report(values: dict[str, float]) -> dict:
    mean = {"rank1": 0.0, "rank5": 0.0, "rank10": 0.0, "rank20": 0.0, "mAP": 0.0, "mINP": 0.0}
    return {"results": {"raw-raw": {"visible_to_thermal": {"mean": {**mean, **values}}}}}


def test_summary_by_hand() -> None:
    summary = summarize_reports({2: report({"mAP": 0.5}), 1: report({"mAP": 0.3})})
    entry = summary["results"]["raw-raw"]["visible_to_thermal"]["mAP"]
    assert summary["trials"] == [1, 2]
    assert entry["mean"] == pytest.approx(0.4)
    assert entry["std"] == pytest.approx(0.2 / 2**0.5)  # sample std of 0.3, 0.5
    assert entry["per_trial"] == {1: 0.3, 2: 0.5}
    assert spread([0.7]) == {"mean": 0.7, "std": 0.0, "min": 0.7, "max": 0.7}
    assert spread([1.0, 2.0, 4.0])["std"] == pytest.approx((7 / 3) ** 0.5)
    with pytest.raises(ValueError, match="at least one report"):
        summarize_reports({})
    with pytest.raises(KeyError, match=r"results\.raw-raw\.visible_to_thermal\.mean\.rank1"):
        summarize_reports({1: {"results": {"raw-raw": {"visible_to_thermal": {"mean": {}}}}}})


def test_refuses_other_datasets(tiny_sysu_root: Path, tmp_path: Path) -> None:
    cfg = load_config(tiny_overrides(tiny_sysu_root, tmp_path))
    with pytest.raises(ValueError, match="per-trial protocol"):
        regdb_trials.run(cfg)


@pytest.mark.slow
def test_two_trials_train_and_evaluate_one_model_each(
    tiny_regdb_root: Path, tmp_path: Path
) -> None:
    cfg = load_config(
        tiny_overrides(
            tiny_regdb_root,
            tmp_path,
            "dataset.run_trials=[1,2]",
            "train.epochs=1",
            "train.max_batches_per_epoch=1",
            "train.checkpoint_every=0",
            "eval.protocols=[raw-raw]",
            "eval.privacy_images=0",
            "ppa=baseline",
            "run_name=trials",
            dataset="synthetic_regdb",
        )
    )
    # tiny_overrides pins test trial 1; the per-trial run needs it to follow the training trial.
    cfg.dataset.test.trials = ["${dataset.train_trial}"]
    path = regdb_trials.run(cfg)
    summary = json.loads(Path(path).read_text())
    assert summary["trials"] == [1, 2]
    map_ = summary["results"]["raw-raw"]["visible_to_thermal"]["mAP"]
    for trial in (1, 2):
        own = json.loads(
            (tmp_path / "out" / f"trial_{trial}" / "evaluation" / "metrics.json").read_text()
        )
        group = own["results"]["raw-raw"]["visible_to_thermal"]
        # Each model was tested on its own trial only.
        assert [t["trial"] for t in group["trials"]] == [trial]
        assert map_["per_trial"][str(trial)] == pytest.approx(group["mean"]["mAP"])
        checkpoint = tmp_path / "out" / f"trial_{trial}" / "checkpoints" / "last.pt"
        assert checkpoint.is_file()
    values = list(map_["per_trial"].values())
    assert map_["mean"] == pytest.approx(sum(values) / 2)
    assert map_["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    rows = (tmp_path / "out" / "regdb_trials.md").read_text().splitlines()
    assert sum(row.startswith("| raw-raw |") for row in rows) == 2
