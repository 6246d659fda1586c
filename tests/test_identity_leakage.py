"""A model is never scored on identities it was trained on (RegDB: never on another trial)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_data_protocols import write_regdb, write_sysu

from ppa.checkpoint import save_checkpoint
from ppa.cli import evaluate as evaluate_cli
from ppa.config import load_config
from ppa.data import protocols
from ppa.data.leakage import IdentityLeakError, TrainingSource, check_disjoint, check_trained_on
from ppa.device import DeviceSettings
from ppa.eval.evaluate import evaluate
from ppa.model import create_model

from conftest import tiny_overrides


def regdb_cfg(root: Path, *extra: str):
    return load_config(["dataset=synthetic_regdb", f"dataset.root={root}", *extra])


def test_regdb_other_trial_is_refused_naming_both(tmp_path: Path) -> None:
    root = write_regdb(tmp_path / "regdb")
    cfg = regdb_cfg(root, "dataset.train_trial=1", "dataset.test.trials=[1,2]")
    source = TrainingSource.from_config(cfg.dataset)
    assert source.train_trial == 1 and source.identities == {1, 11}
    with pytest.raises(IdentityLeakError, match=r"trial 1 cannot be evaluated on trial\(s\) \[2\]"):
        check_disjoint(source, protocols.test_settings(cfg.dataset))
    # Its own trial passes.
    own = regdb_cfg(root, "dataset.train_trial=1")
    check_disjoint(source, protocols.test_settings(own.dataset))


def test_synthetic_regdb_trials_share_identities(tiny_regdb_root: Path) -> None:
    """Why the trial check exists: trial 2's test half holds trial 1's training identities."""
    trial1 = TrainingSource.from_config(regdb_cfg(tiny_regdb_root, "dataset.train_trial=1").dataset)
    other = regdb_cfg(tiny_regdb_root, "dataset.train_trial=2").dataset
    tested = {r.pid for s in protocols.test_settings(other) for r in s.split.query}
    assert tested & trial1.identities
    # Even without the trial rule, the identity rule refuses it.
    anonymous = TrainingSource(trial1.dataset, "regdb", trial1.root, None, trial1.identities)
    with pytest.raises(IdentityLeakError, match="identities the model was trained on"):
        check_disjoint(anonymous, protocols.test_settings(other))


def test_sysu_test_ids_that_were_trained_on_are_refused(tmp_path: Path) -> None:
    root = write_sysu(tmp_path / "sysu")
    cfg = OmegaConf.create(
        {"protocol": "sysu", "root": str(root), "test": {"modes": ["all"], "trials": 1, "shots": 1}}
    )
    source = TrainingSource.from_config(cfg)
    check_disjoint(source, protocols.test_settings(cfg))  # 4, 5 vs 1, 2, 3
    # A split file that lists a training id among the test ids.
    (root / "exp" / "test_id.txt").write_text("5,4,2")
    with pytest.raises(
        IdentityLeakError, match=r"holds 1 identities the model was trained on \(2\)"
    ):
        check_disjoint(source, protocols.test_settings(cfg))


def test_other_dataset_roots_are_not_compared(tmp_path: Path) -> None:
    trained = write_sysu(tmp_path / "a")
    other = write_sysu(tmp_path / "b")
    (other / "exp" / "test_id.txt").write_text("1,2")
    source = TrainingSource.from_config(
        OmegaConf.create({"protocol": "sysu", "root": str(trained)})
    )
    cfg = OmegaConf.create(
        {
            "protocol": "sysu",
            "root": str(other),
            "test": {"modes": ["all"], "trials": 1, "shots": 1},
        }
    )
    check_disjoint(source, protocols.test_settings(cfg))


def test_evaluate_refuses_before_extracting_features(tiny_regdb_root: Path, tmp_path: Path) -> None:
    cfg = load_config(
        tiny_overrides(
            tiny_regdb_root, tmp_path, "dataset.test.trials=[2]", dataset="synthetic_regdb"
        )
    )
    model = create_model(cfg.model, 6)
    with pytest.raises(IdentityLeakError, match=r"trial 1 cannot be evaluated on trial\(s\) \[2\]"):
        evaluate(model, cfg, device=DeviceSettings(torch.device("cpu")), protocols=["raw-raw"])


def test_evaluate_script_uses_the_checkpoints_training_trial(
    tiny_regdb_root: Path, tmp_path: Path
) -> None:
    """A checkpoint records its training trial; asking for another one is refused."""
    trained = load_config(tiny_overrides(tiny_regdb_root, tmp_path, dataset="synthetic_regdb"))
    num_classes = len(protocols.load_label_space(trained.dataset))
    path = save_checkpoint(
        tmp_path / "trial1.pt", create_model(trained.model, num_classes), trained
    )
    evaluate_script = evaluate_cli
    asked = load_config(
        tiny_overrides(
            tiny_regdb_root,
            tmp_path,
            "dataset.train_trial=2",
            "dataset.test.trials=[2]",
            f"checkpoint={path}",
            "eval.protocols=[raw-raw]",
            "eval.privacy_images=0",
            dataset="synthetic_regdb",
        )
    )
    with pytest.raises(IdentityLeakError, match=r"trial 1 cannot be evaluated on trial\(s\) \[2\]"):
        evaluate_script.run(asked)


def test_evaluate_script_says_when_the_test_set_is_not_the_training_set(
    tiny_regdb_root: Path,
    tiny_sysu_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Cross-dataset testing runs, with a warning naming both sets (a forgotten `dataset=`
    would otherwise score the model on the default set without a word)."""
    trained = load_config(tiny_overrides(tiny_regdb_root, tmp_path, dataset="synthetic_regdb"))
    num_classes = len(protocols.load_label_space(trained.dataset))
    path = save_checkpoint(tmp_path / "regdb.pt", create_model(trained.model, num_classes), trained)
    asked = load_config(
        tiny_overrides(
            tiny_sysu_root,
            tmp_path,
            f"checkpoint={path}",
            "eval.protocols=[raw-raw]",
            "eval.privacy_images=0",
            f"eval.output_dir={tmp_path / 'eval'}",
        )
    )
    with caplog.at_level("WARNING", logger="ppa.cli.evaluate"):
        metrics = evaluate_cli.run(asked)
    assert metrics.exists()
    warned = [r.getMessage() for r in caplog.records if r.name == "ppa.cli.evaluate"]
    assert any(
        "trained on dataset synthetic_regdb; evaluating on synthetic_sysu" in m for m in warned
    ), warned


def test_a_training_root_that_is_gone_is_not_opened(tmp_path: Path) -> None:
    """A checkpoint from another machine names a root that does not exist here."""
    root = write_sysu(tmp_path / "sysu")
    cfg = OmegaConf.create(
        {"protocol": "sysu", "root": str(root), "test": {"modes": ["all"], "trials": 1, "shots": 1}}
    )
    elsewhere = OmegaConf.create({"protocol": "sysu", "root": str(tmp_path / "gone")})
    check_trained_on(elsewhere, protocols.test_settings(cfg))
    (root / "exp" / "test_id.txt").write_text("5,4,1")
    with pytest.raises(IdentityLeakError, match=r"\(1\)"):
        check_trained_on(cfg, protocols.test_settings(cfg))
