"""The simulation launcher (ppa-simulate, ppa.launch.simulation) and the federation it runs.

Fast tests: the launcher's argument handling, site counting and resources, without Flower.
Integration tests (slow): real `flwr run` on a SuperLink of the launcher's own with Flower's
Ray-backed simulation runtime, six camera sites of the tiny synthetic SYSU set. Simulations
are shared through module-scoped fixtures: one clean 2-round run serves the end-to-end
checks, the first half of resume equality and the clean reference of the poisoning test.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common.config import parse_config_args
from flwr.supercore.utils import simulation_config_from_json
from test_deployment_engine import live_processes_mentioning

from ppa.cli import evaluate as evaluate_cli
from ppa.cli import simulate as simulate_cli
from ppa.config import load_config
from ppa.launch.command_line import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE
from ppa.launch.flower_config import format_config_args
from ppa.launch.proctree import alive, descendants
from ppa.launch.simulation import plan_simulation

from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "ppa-simulate"  # the console script (pip install -e .)
SITE_MODALITY = {
    "cam1": "visible",
    "cam2": "visible",
    "cam3": "infrared",
    "cam4": "visible",
    "cam5": "visible",
    "cam6": "infrared",
}
SITES = list(SITE_MODALITY)
# Fewest batches and one test trial: the runs check the federation's behaviour, not learning.
# One set of statistics per modality at evaluation (the demo's auto takes each camera's from the
# statistics round): ppa-evaluate of model_latest.pt must then reproduce the server's numbers.
FAST = [
    "train.max_batches_per_epoch=2",
    "dataset.test.trials=1",
    "deterministic=true",
    "eval.camera_statistics=none",
]
RUN_TIMEOUT_S = 300  # one launcher run; ~35 s on an idle 2-core machine

# --------------------------------------------------------------------------- fast


def test_arguments_default_to_the_demo_experiment() -> None:
    args = simulate_cli.parse_args([])
    assert (args.experiment, args.resume, args.num_supernodes, args.overrides) == (
        "demo",
        False,
        None,
        [],
    )
    args = simulate_cli.parse_args(
        [
            "--resume",
            "--num-supernodes",
            "6",
            "--timeout",
            "60",
            "federation.rounds=2",
            "--experiment",
            "docker_sysu",
            "model=tiny",
        ]
    )
    assert args.resume and args.num_supernodes == 6 and args.timeout == 60.0
    assert args.experiment == "docker_sysu"
    assert args.overrides == ["federation.rounds=2", "model=tiny"]


def test_plan_counts_the_sites_of_the_partition(tiny_sysu_root: Path, tmp_path: Path) -> None:
    cfg = load_config(["experiment=demo", *tiny_overrides(tiny_sysu_root, tmp_path)])
    plan = plan_simulation(cfg, tmp_path)
    assert plan.sites == tuple(SITE_MODALITY.items())
    assert plan.federation_config() == {
        "num-supernodes": 6,
        "client-resources-num-cpus": 1,
        "client-resources-num-gpus": 0.0,
    }
    assert plan.output_dir == (tmp_path / "out").resolve()
    assert plan_simulation(cfg, tmp_path, num_supernodes=6) == plan

    cfg = load_config(
        [
            *tiny_overrides(tiny_sysu_root, tmp_path),
            "federation.partition=by_identity",
            "federation.sites_per_modality=3",
            "federation.resources.num_cpus=2",
            "federation.resources.num_gpus=0.25",
            "output_dir=outputs/x",
        ]
    )
    plan = plan_simulation(cfg, tmp_path)
    assert plan.num_supernodes == 6
    assert plan.sites[0] == ("infrared-0", "infrared")
    assert (plan.num_cpus, plan.num_gpus) == (2, 0.25)
    assert plan.output_dir == tmp_path / "outputs" / "x"  # relative: anchored at the workdir


def test_federation_config_is_what_flower_accepts(tiny_sysu_root: Path, tmp_path: Path) -> None:
    cfg = load_config(["experiment=demo", *tiny_overrides(tiny_sysu_root, tmp_path)])
    plan = plan_simulation(cfg, tmp_path)
    text = format_config_args(plan.federation_config(), "--federation-config")
    # What `flwr run --federation-config` does with the string (flwr/cli/run/run.py).
    parsed = {k.replace("-", "_"): v for k, v in parse_config_args([text]).items()}
    proto = simulation_config_from_json(parsed)
    assert (
        proto.num_supernodes,
        proto.client_resources_num_cpus,
        proto.client_resources_num_gpus,
    ) == (6, 1, 0.0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["federation.resources.num_cpus=0.5"], "whole CPUs"),
        (["federation.resources.num_gpus=-1"], "num_gpus"),
        (["federation.partition=by_weather"], "partition strategy"),
    ],
)
def test_plan_rejects_bad_settings(
    tiny_sysu_root: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    cfg = load_config([*tiny_overrides(tiny_sysu_root, tmp_path), *extra])
    with pytest.raises(ValueError, match=message):
        plan_simulation(cfg, tmp_path)


def test_plan_rejects_a_supernode_count_that_is_not_the_partition(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    cfg = load_config(tiny_overrides(tiny_sysu_root, tmp_path))
    with pytest.raises(ValueError, match=r"--num-supernodes 4 .* 6 site\(s\) \(cam1, cam2"):
        plan_simulation(cfg, tmp_path, num_supernodes=4)


def test_plan_names_a_missing_dataset(tmp_path: Path) -> None:
    cfg = load_config([f"dataset.root={tmp_path / 'nowhere'}"])
    with pytest.raises(FileNotFoundError, match=r"nowhere.*ppa-make-synthetic"):
        plan_simulation(cfg, tmp_path)


def test_usage_errors_exit_2_before_anything_starts(
    tiny_sysu_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tiny_overrides(tiny_sysu_root, tmp_path)
    assert simulate_cli.main([*base, "federation.no_such_key=1"]) == EXIT_USAGE
    assert "no_such_key" in caplog.text
    assert simulate_cli.main(["--num-supernodes", "2", *base]) == EXIT_USAGE
    assert simulate_cli.main([*base, "dataset.root=/a b"]) == EXIT_USAGE
    assert "whitespace" in caplog.text
    assert not (tmp_path / "out").exists()  # no summary, no SuperLink state: nothing started


# --------------------------------------------------------------------------- integration


class Launched:
    """The launcher as a subprocess (output in files: a pipe could fill up and block it),
    with every process seen below it while it ran, sampled twice a second."""

    def __init__(self, run_dir: Path, *args: str) -> None:
        self.argv = [sys.executable, str(SCRIPT), *args]
        self.stdout_path, self.stderr_path = run_dir / "launcher.out", run_dir / "launcher.err"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=err)
        self.seen: dict[int, int] = {}
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            self.seen.update(descendants(self.process.pid))
            self._done.wait(0.5)

    def tree(self) -> list[str]:
        """Command lines of the processes below the launcher now."""
        return [cmdline(pid) for pid in descendants(self.process.pid)]

    def finish(self, timeout: float = RUN_TIMEOUT_S) -> int:
        """Wait for the exit code; past `timeout` SIGTERM it first (it stops what it
        started), so even a hung run leaves nothing behind."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:  # its own cleanup hung: the last resort
                self.process.kill()
                self.process.wait()
            pytest.fail(f"the launcher did not finish in {timeout} s:\n{self.output()}")
        finally:
            self._done.set()
            self._watcher.join()

    def output(self) -> str:
        return self.stdout_path.read_text()[-4000:] + self.stderr_path.read_text()[-4000:]

    def leftovers(self) -> list[str]:
        """Processes that ran below the launcher and still run (zombies do not count)."""
        return [cmdline(pid) for pid, start in self.seen.items() if alive(pid, start)]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"<pid {pid} gone>"


def simulate(root: Path, run_dir: Path, *extra: str, resume: bool = False) -> Path:
    """One simulation through the launcher; asserts exit 0 and that no process of it is
    left (found by ancestry while it ran, and by the run's folder in the environment)."""
    overrides = tiny_overrides(root, run_dir, *FAST, *extra)
    launched = Launched(run_dir, *(["--resume"] if resume else []), *overrides)
    code = launched.finish()
    out = run_dir / "out"
    assert code == EXIT_OK, launched.output()
    assert launched.leftovers() == []
    assert live_processes_mentioning(str(out)) == []
    return out


def history(out: Path) -> list[dict]:
    return json.loads((out / "history.json").read_text())["rounds"]


def server_arrays(out: Path, server_round: int) -> dict[str, np.ndarray]:
    ckpt = torch.load(
        out / "checkpoints" / f"round_{server_round:04d}.pt", map_location="cpu", weights_only=False
    )
    assert ckpt["server_round"] == server_round
    return {k: np.asarray(v) for k, v in ckpt["arrays"].items()}


@pytest.fixture(scope="module")
def clean(tiny_sysu_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six sites, two rounds, no fault (deterministic): the reference run."""
    return simulate(tiny_sysu_root, tmp_path_factory.mktemp("clean"), "federation.rounds=2")


@pytest.mark.slow
@pytest.mark.integration
def test_simulation_runs_six_sites_through_flwr_run(clean: Path) -> None:
    summary = json.loads((clean / "simulation.json").read_text())
    assert summary["status"] == "finished:completed"
    assert summary["output_dir"] == str(clean.resolve())
    assert summary["federation_config"]["num-supernodes"] == 6
    assert int(summary["run_id"]) > 0 and summary["elapsed_s"] > 0
    assert [s["site"] for s in summary["sites"]] == SITES

    rounds = history(clean)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for record in rounds:
        for protocol in ("raw-raw", "anon-anon"):
            numbers = record["central"][protocol]
            assert 0.0 < numbers["mAP"] <= 1.0 and 0.0 <= numbers["rank1"] <= 1.0
    for record in rounds[1:]:
        assert record["replied"] == SITES and record["failed"] == []
        # The statistics round before each evaluation heard from every site.
        assert sorted(record["calibration"]["sites"]) == SITES
        assert record["calibration"]["failed"] == [] and record["calibration"]["images"] > 0
    assert {p.name for p in (clean / "checkpoints").glob("round_*.pt")} == {
        "round_0001.pt",
        "round_0002.pt",
    }
    assert (clean / "model_latest.pt").stat().st_size > 0
    assert (clean / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The launcher kept Flower's home and the SuperLink database in the run's folder.
    assert (clean / "flower" / "flwr-home" / "cli" / "config.toml").exists()
    assert (clean / "flower" / "superlink" / "state.db").exists()
    run_log = Path(summary["run_log"]).read_text()
    assert "round 2 central evaluation" in run_log


@pytest.mark.slow
@pytest.mark.integration
def test_ppa_evaluate_of_model_latest_reproduces_the_last_central_evaluation(
    clean: Path, tiny_sysu_root: Path, tmp_path: Path
) -> None:
    """model_latest.pt is the model the server evaluated last: ppa-evaluate scores it the
    same, every protocol and trial."""
    cfg = load_config(
        [
            "experiment=demo",
            *tiny_overrides(
                tiny_sysu_root,
                tmp_path,
                *FAST,
                f"checkpoint={clean / 'model_latest.pt'}",
                f"eval.output_dir={tmp_path / 'evaluate'}",
                "eval.privacy_images=0",
                "eval.face_detection=false",
            ),
        ]
    )
    metrics = json.loads(evaluate_cli.run(cfg).read_text())
    server = json.loads((clean / "evaluation" / "round_0002.json").read_text())
    assert set(server["results"]) <= set(metrics["results"])
    for protocol, groups in server["results"].items():
        for group, entry in groups.items():
            ours = metrics["results"][protocol][group]
            for theirs, mine in zip(entry["trials"], ours["trials"], strict=True):
                for key in ("mAP", "rank1", "mINP"):
                    assert mine[key] == pytest.approx(theirs[key], abs=1e-6), (protocol, key)


@pytest.mark.integration
def test_simulation_records_client_drift_per_round(clean: Path) -> None:
    """Every round's drift of each site against the aggregate, per site and per modality, in
    history.json, the round log and drift.png."""
    for record in history(clean)[1:]:
        drift = record["drift"]
        assert sorted(drift["sites"]) == SITES
        for site, values in drift["sites"].items():
            assert values["modality"] == SITE_MODALITY[site]
            assert -1.0 <= values["cosine"] <= 1.0 and values["norm_ratio"] > 0.0
        assert sorted(drift["modalities"]) == ["infrared", "visible"]
        visible = [drift["sites"][s]["cosine"] for s in SITES if SITE_MODALITY[s] == "visible"]
        assert drift["modalities"]["visible"]["cosine"] == pytest.approx(np.mean(visible))
    assert (clean / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((clean / "simulation.json").read_text())
    assert "round 2 client drift: infrared: cos" in Path(summary["run_log"]).read_text()


@pytest.mark.slow
@pytest.mark.integration
def test_training_camera_statistics_come_from_the_statistics_round(
    clean: Path, tiny_sysu_root: Path, tmp_path: Path
) -> None:
    """eval.camera_statistics=auto (the demo's) is training here: the server keeps each
    one-camera site's statistics per camera and evaluates every test camera with them. Training
    is untouched (round 1's model is the clean run's); round 0, before any statistics round, is
    evaluated as without them; round 1 is evaluated differently."""
    out = simulate(tiny_sysu_root, tmp_path, "federation.rounds=1", "eval.camera_statistics=auto")
    before, after = server_arrays(clean, 1), server_arrays(out, 1)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    rounds, plain = history(out), history(clean)
    assert rounds[1]["calibration"]["cameras"] == [int(site[3:]) for site in SITES]
    assert plain[1]["calibration"]["cameras"] == rounds[1]["calibration"]["cameras"]
    assert rounds[0]["central"] == plain[0]["central"]
    assert rounds[1]["central"]["raw-raw"] != plain[1]["central"]["raw-raw"]


@pytest.fixture(scope="module")
def resumed(clean: Path, tmp_path_factory: pytest.TempPathFactory, tiny_sysu_root: Path) -> Path:
    """The clean run's folder (stopped after round 2) resumed for a third round.

    A copy, so the clean run's files stay as they were for the other tests; what resume reads
    (checkpoints/) is byte for byte what the clean run left.
    """
    run_dir = tmp_path_factory.mktemp("resumed")
    shutil.copytree(clean, run_dir / "out", ignore=shutil.ignore_patterns("flower"))
    return simulate(tiny_sysu_root, run_dir, "federation.rounds=3", resume=True)


@pytest.fixture(scope="module")
def uninterrupted(tiny_sysu_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three rounds in one go, otherwise the clean run's settings."""
    return simulate(tiny_sysu_root, tmp_path_factory.mktemp("straight"), "federation.rounds=3")


@pytest.mark.slow
@pytest.mark.integration
def test_resume_reproduces_the_uninterrupted_round_3(
    clean: Path, resumed: Path, uninterrupted: Path
) -> None:
    # Separate launches agree before any resume is involved (else: run-to-run nondeterminism).
    before = server_arrays(clean, 2)
    straight = server_arrays(uninterrupted, 2)
    assert before.keys() == straight.keys()
    differ = [k for k in before if not np.array_equal(before[k], straight[k])]
    assert differ == [], f"round 2 differs between two launches: {differ[:5]}"

    after_resume = server_arrays(resumed, 3)
    straight = server_arrays(uninterrupted, 3)
    assert after_resume.keys() == straight.keys()
    differ = [k for k in straight if not np.array_equal(after_resume[k], straight[k])]
    assert differ == [], f"round 3 after resume differs from the uninterrupted run: {differ[:5]}"

    resumed_rounds, straight_rounds = history(resumed), history(uninterrupted)
    assert [r["round"] for r in resumed_rounds] == [0, 1, 2, 3]
    assert resumed_rounds[3]["central"] == straight_rounds[3]["central"]
    assert resumed_rounds[3]["replied"] == SITES
    summary = json.loads((resumed / "simulation.json").read_text())
    assert summary["run_config"]["resume"] is True


@pytest.mark.slow
@pytest.mark.integration
def test_a_site_that_raises_does_not_stop_the_run(tiny_sysu_root: Path, tmp_path: Path) -> None:
    out = simulate(
        tiny_sysu_root,
        tmp_path,
        "federation.rounds=2",
        "federation.inject.fail_sites=[cam2]",
        "federation.inject.fail_rounds=[1]",
    )
    first, second = history(out)[1:]
    assert first["replied"] == [s for s in SITES if s != "cam2"]
    assert len(first["failed"]) == 1
    assert first["failed"][0].startswith("node ")
    assert "'cam2': injected failure in round 1" in first["failed"][0]
    assert first["sites"].keys() == set(first["replied"])
    assert second["replied"] == SITES and second["failed"] == []
    assert server_arrays(out, 2).keys() == server_arrays(out, 1).keys()


def all_finite(arrays: dict[str, np.ndarray]) -> bool:
    return all(np.isfinite(v).all() for v in arrays.values() if v.dtype.kind == "f")


@pytest.mark.slow
@pytest.mark.integration
def test_a_nan_update_is_rejected_and_the_model_stays_finite(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    # Quoted: a bare `nan` is a float NaN to Hydra, not the attack's name.
    out = simulate(
        tiny_sysu_root,
        tmp_path,
        "federation.rounds=1",
        "federation.inject.attack_sites=[cam2]",
        "federation.inject.attack='nan'",
    )
    record = history(out)[1]
    assert record["replied"] == [s for s in SITES if s != "cam2"]
    assert len(record["failed"]) == 1
    assert "cam2" in record["failed"][0] and "NaN" in record["failed"][0]
    assert all_finite(server_arrays(out, 1))
    assert all(math.isfinite(v["mAP"]) for v in record["central"].values())


@pytest.mark.slow
@pytest.mark.integration
def test_a_scaled_update_is_flagged_and_the_median_holds(
    clean: Path, tiny_sysu_root: Path, tmp_path: Path
) -> None:
    out = simulate(
        tiny_sysu_root,
        tmp_path,
        "federation.rounds=2",
        "federation.inject.attack_sites=[cam2]",
        "federation.inject.attack=scale",
        "federation.inject.attack_factor=50",
        "federation.aggregation.rule=median",
    )
    attacked, reference = history(out), history(clean)
    for record in attacked[1:]:
        assert record["replied"] == SITES  # well-formed: accepted, then out-voted
        assert "cam2" in record["flagged"], record["anomalies"]
        assert record["flagged"] == ["cam2"]
    assert all_finite(server_arrays(out, 2))
    # With so little training the numbers are near chance: the check is closeness.
    final = attacked[-1]["central"]["raw-raw"]["mAP"]
    clean_final = reference[-1]["central"]["raw-raw"]["mAP"]
    assert abs(final - clean_final) < 0.05, (final, clean_final)


@pytest.mark.slow
@pytest.mark.integration
def test_a_failed_run_exits_non_zero_and_says_why(tiny_sysu_root: Path, tmp_path: Path) -> None:
    # Composes fine (the launcher checks it), fails in the ServerApp: no such protocol.
    overrides = tiny_overrides(tiny_sysu_root, tmp_path, *FAST, "federation.eval_protocols=[raw-x]")
    launched = Launched(tmp_path, *overrides)
    assert launched.finish() == EXIT_RUN_FAILED, launched.output()
    summary = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert summary["status"] == "finished:failed"
    assert "raw-x" in summary["run"]["status-details"]
    assert "raw-x" in launched.stderr_path.read_text()  # the launcher's error names the cause
    assert launched.leftovers() == []
    assert live_processes_mentioning(str(tmp_path / "out")) == []


@pytest.mark.slow
@pytest.mark.integration
def test_sigterm_stops_every_process_of_the_simulation(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    launched = Launched(
        tmp_path, *tiny_overrides(tiny_sysu_root, tmp_path, *FAST, "federation.rounds=3")
    )
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        # Wait for the Ray workers of the simulated sites: the deepest process tree.
        while not any("ClientAppActor" in c for c in launched.tree()):
            assert launched.process.poll() is None, launched.output()
            assert time.monotonic() < deadline, "the simulation's Ray actors never started"
            time.sleep(0.5)
        launched.process.send_signal(signal.SIGTERM)  # as `kill` or a CI timeout would
    finally:
        code = launched.finish(timeout=120)
    assert code == EXIT_INTERRUPTED, launched.output()
    summary = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert summary["status"] == "interrupted"
    assert launched.leftovers() == []
    assert live_processes_mentioning(str(tmp_path / "out")) == []
