"""scripts/train_central.py and scripts/evaluate.py as a user runs them, and their errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

from ppa.checkpoint import CheckpointError
from ppa.config import load_config
from ppa.data.errors import DatasetLayoutError
from ppa.data.keypoints import MissingKeypointsError

from conftest import REPO, tiny_overrides


def run_script(name: str, overrides: list[str], timeout: int = 600) -> list[str]:
    env = dict(os.environ, PPA_WORKDIR=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / f"{name}.py"), *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


@pytest.fixture(scope="module")
def trained(tiny_sysu_root: Path, tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("central")
    overrides = tiny_overrides(
        tiny_sysu_root,
        out,
        "train.epochs=2",
        "train.max_batches_per_epoch=3",
        "train.checkpoint_every=1",
    )
    lines = run_script("train_central", overrides)
    return Path(lines[-1]), overrides


@pytest.mark.slow
def test_train_central_writes_checkpoints(trained) -> None:
    last, _ = trained
    assert last.name == "last.pt" and last.is_file()
    assert (last.parent / "epoch_0001.pt").is_file()
    history = json.loads((last.parent.parent / "train_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["batches"] == 3 for h in history)


@pytest.mark.slow
def test_evaluate_writes_every_promised_file(trained) -> None:
    last, overrides = trained
    lines = run_script("evaluate", [*overrides, f"checkpoint={last}"])
    metrics_path = Path(lines[-1])
    assert metrics_path.name == "metrics.json"
    # In the checkpoint's own run, a folder of its own; a second evaluation gets another.
    assert metrics_path.parent.parent == last.parent.parent / "evaluate"
    assert metrics_path.parent.name.startswith("last-")
    report = json.loads(metrics_path.read_text())
    assert set(report["results"]) == {"raw-raw", "anon-anon", "raw-anon"}
    for protocol in report["results"].values():
        assert set(protocol) == {"all", "indoor"}
        for group in protocol.values():
            assert len(group["trials"]) == 2
            assert 0.0 <= group["mean"]["mAP"] <= 1.0
            assert len(group["mean"]["cmc"]) >= 1
    head = report["anonymization"]
    assert head["head_psnr"] < head["image_psnr"]  # the head is hidden harder than the rest
    assert 0.0 <= head["face_rate_raw"] <= 1.0
    # Both modalities measured, half each (eval.privacy_images=16), and the count is printed.
    assert head["num_images_visible"] == head["num_images_infrared"] == 8
    assert any("8 visible + 8 infrared test images" in line for line in lines)
    assert Path(report["cmc_plot"]).is_file()
    assert Path(report["anonymization_grid"]).is_file()
    assert any(line.startswith("raw-raw") for line in lines)  # the printed table


def test_evaluate_errors_are_clear(tiny_sysu_root: Path, tmp_path: Path) -> None:
    evaluate = import_module("ppa.cli.evaluate")
    base = tiny_overrides(tiny_sysu_root, tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        evaluate.run(load_config([*base, f"checkpoint={junk}"]))
    with pytest.raises(ValueError, match="checkpoint="):
        evaluate.run(load_config(base))

    from ppa.checkpoint import save_checkpoint
    from ppa.model import create_model

    cfg = load_config(base)
    ckpt = save_checkpoint(tmp_path / "m.pt", create_model(cfg.model, 12), cfg)
    not_sysu = tmp_path / "not_sysu"
    not_sysu.mkdir()
    with pytest.raises(DatasetLayoutError, match="not_sysu"):
        evaluate.run(load_config([*base, f"checkpoint={ckpt}", f"dataset.root={not_sysu}"]))

    no_keypoints = tmp_path / "no_kp"
    shutil.copytree(tiny_sysu_root, no_keypoints)
    kp = no_keypoints / "keypoints.npz"
    kp.unlink()
    with pytest.raises(FileNotFoundError, match=r"keypoints\.npz"):
        evaluate.run(load_config([*base, f"checkpoint={ckpt}", f"dataset.root={no_keypoints}"]))
    # An entry missing from an existing cache names the image and the cache file.
    from ppa.data.keypoints import KeypointCache

    cache = KeypointCache.load(tiny_sysu_root / "keypoints.npz")
    kept = {k: v for i, (k, v) in enumerate(cache.items()) if i % 2}
    KeypointCache(kept, source="test").save(kp)
    with pytest.raises(MissingKeypointsError, match=r"keypoints\.npz"):
        evaluate.run(load_config([*base, f"checkpoint={ckpt}", f"dataset.root={no_keypoints}"]))


def ablation_overrides(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    """A two-batch, one-epoch ladder trained into tmp_path/abl."""
    return tiny_overrides(
        root,
        tmp_path,
        "train.epochs=1",
        "train.max_batches_per_epoch=2",
        "run_name=abl",
        f"output_dir={tmp_path / 'abl'}",
        *extra,
    )


@pytest.mark.slow
def test_ablation_ladder_writes_one_table(tiny_sysu_root: Path, tmp_path: Path) -> None:
    overrides = ablation_overrides(tiny_sysu_root, tmp_path, "+ablation=[baseline,full]")
    lines = run_script("run_ablation", overrides)
    table = Path(lines[-1])
    assert table.name == "ablation.md"
    text = table.read_text()
    assert "| baseline |" in text and "| full |" in text
    rows = json.loads((table.parent / "ablation.json").read_text())
    assert set(rows) == {"baseline", "full"}
    for row in rows.values():
        assert set(row["results"]) == {"raw-raw", "anon-anon", "raw-anon"}
        assert Path(row["checkpoint"]).is_file()
    # Each method trained into its own folder inside the ablation's.
    assert (tmp_path / "abl" / "full" / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_ablation_over_seeds_reports_mean_and_sample_spread(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    overrides = ablation_overrides(tiny_sysu_root, tmp_path, "+ablation=[kpr]", "+seeds=[3,4]")
    table = Path(run_script("run_ablation", overrides)[-1])
    payload = json.loads((table.parent / "ablation.json").read_text())
    assert payload["seeds"] == [3, 4]
    for seed in (3, 4):  # each seed trained into its own folder, with its own seed
        saved = tmp_path / "abl" / f"seed{seed}" / "kpr" / "checkpoints" / "last.pt"
        assert saved.is_file()
    maps = [payload["per_seed"][str(s)]["kpr"]["results"]["raw-raw"]["mAP"] for s in (3, 4)]
    assert maps[0] != maps[1]  # two seeds, two models
    got = payload["summary"]["kpr"]["results"]["raw-raw"]["mAP"]
    mean = (maps[0] + maps[1]) / 2
    assert got["mean"] == pytest.approx(mean)
    assert got["std"] == pytest.approx(abs(maps[0] - maps[1]) / 2**0.5)  # sample std, n - 1
    assert got["per_seed"] == maps
    row = next(line for line in table.read_text().splitlines() if line.startswith("| kpr |"))
    assert f"{100 * mean:.2f} ± {100 * got['std']:.2f}" in row
    assert row.rstrip(" |").endswith(f"{100 * maps[0]:.2f}, {100 * maps[1]:.2f}")


def test_ablation_methods_keep_the_runs_ppa_settings_but_not_its_method() -> None:
    from ppa.cli.ablation import method_config

    cfg = load_config(
        [
            "experiment=demo",  # sets ppa.kpr_joints=all
            "ppa.label_smoothing=0.0",
            "ppa.weights.align=0.5",
            "ppa.weights.kpr=0.0",
            "ppa.offsets=false",  # a method switch of the run's own method: not carried
        ]
    )
    rows = {m: method_config(cfg, m).ppa for m in ("baseline", "anon_only", "kpr", "dcma", "full")}
    for method, ppa in rows.items():
        assert ppa.name == method
        assert ppa.kpr_joints == "all" and ppa.label_smoothing == 0.0
    # Weights tune the terms a method has and never switch a term on.
    assert rows["baseline"].weights.align == 0.0 and rows["kpr"].weights.align == 0.0
    assert rows["dcma"].weights.align == 0.5 and rows["full"].weights.align == 0.5
    assert rows["kpr"].weights.kpr == 0.0 and rows["full"].weights.kpr == 0.0
    assert rows["full"].weights.dc == 1.0 and rows["dcma"].weights.dc == 1.0
    # The switches come from each method's own file.
    assert rows["full"].offsets and rows["dcma"].offsets and not rows["kpr"].offsets
    assert rows["kpr"].pose_guided and not rows["anon_only"].pose_guided
    # Without overrides (no experiment either) every method is exactly its file.
    plain = method_config(load_config([]), "kpr").ppa
    assert plain == load_config(["ppa=kpr"]).ppa
