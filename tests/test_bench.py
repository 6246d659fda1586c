"""The benchmark's plumbing (client.bench) on tiny sizes: configs, measurements' bookkeeping,
results files.

Nothing here asserts a timing: the benchmark's numbers come from `ppa-bench` runs.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from client.bench.cases import BENCHMARKS
from client.bench.cases.amp_speedup import _amp_case
from client.bench.cases.eval_speedup import assert_same_metrics, bench_eval_speedup
from client.bench.cases.federation_overhead import clean_rounds, simulated_per_sample
from client.bench.cases.image_cache import bench_image_cache, replies_differ
from client.bench.cases.ppa_step_ratio import _ppa_step_case
from client.bench.cases.throughput import _throughput_case
from client.bench.cases.upload_ratio import central_numbers, upload_per_site
from client.bench.cli import main, parse_only
from client.bench.context import BenchContext, load_bench_config
from client.bench.report import (
    DOCS_BEGIN,
    DOCS_END,
    merge_results,
    render_markdown,
    row,
    update_docs,
)
from client.bench.simulations import SimulationRun, TreeMemorySampler
from client.bench.timing import interleaved
from client.bench.workloads import synthetic_batch
from client.site import RoundResult
from ppa.device import cpu_has_native_bf16
from ppa.launch.proctree import descendants


@pytest.fixture(scope="module")
def cfg():
    return load_bench_config(quick=True)


def tiny_ctx(cfg, tmp_path: Path, **bench_overrides) -> object:
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.bench = OmegaConf.merge(cfg.bench, bench_overrides)
    return BenchContext(
        cfg=cfg, quick=True, output_dir=tmp_path / "out", work_dir=tmp_path / "work"
    )


def test_only_selects_in_canonical_order_and_rejects_unknown_names():
    assert parse_only(None) == list(BENCHMARKS)
    assert parse_only("throughput, eval_speedup") == ["eval_speedup", "throughput"]
    with pytest.raises(ValueError, match="nope"):
        parse_only("eval_speedup,nope")


def test_config_group_and_quick_block(cfg):
    full = load_bench_config()
    assert full.bench.eval_speedup.num_query == 3803
    assert full.bench.eval_speedup.num_gallery == 3000
    assert [2 * n for n in full.bench.sites_scaling.sites_per_modality] == [6, 24, 96]
    assert full.bench.ppa_step.target == 2.1 and full.bench.upload_ratio.target == 0.55
    # --quick keeps every benchmark, at smaller sizes.
    assert len(cfg.bench.ppa_step.cases) == 1
    assert cfg.bench.eval_speedup.reference_repeats == 1
    override = load_bench_config(["bench.eval_speedup.repeats=7"])
    assert override.bench.eval_speedup.repeats == 7


def test_synthetic_batch_is_laid_out_like_the_identity_sampler():
    batch = synthetic_batch(3, 2, 64, 32, seed=0)
    assert batch.images.shape == (12, 3, 64, 32)
    assert batch.keypoints.shape == (12, 17, 3)
    assert batch.labels.tolist() == [0, 0, 1, 1, 2, 2] * 2
    assert batch.modality.tolist() == [0] * 6 + [1] * 6
    assert (batch.keypoints[..., 2] == 0).any() and (batch.keypoints[..., 2] > 0.5).any()
    again = synthetic_batch(3, 2, 64, 32, seed=0)
    assert torch.equal(batch.images, again.images)


def test_interleaved_timing_records_every_candidate():
    calls = []
    samples = interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, warmup=1
    )
    assert calls == ["a", "b"] * 4  # round-robin, warm-up included
    assert len(samples["a"].wall) == len(samples["b"].cpu) == 3
    assert samples["a"].median_wall >= 0 and "median_cpu_s" in samples["b"].summary()


def test_ppa_step_case_on_a_tiny_batch(cfg, tmp_path):
    ctx = tiny_ctx(cfg, tmp_path)
    case = OmegaConf.create(
        {"model": "tiny", "height": 64, "width": 32, "ids": 2, "instances": 2, "repeats": 1}
    )
    result = _ppa_step_case(ctx, case, component_repeats=1)
    assert result["batch"] == 8
    assert result["windowed_masks_identical"] is True
    components = {"masks", "masks_full_frame", "anonymization", "heatmaps"}
    wall, cpu = result["wall"], result["cpu_one_thread"]
    assert set(wall["samples"]) == {"baseline", "full", *components}
    assert set(cpu["samples"]) == {"baseline", "full", "two_view_baseline", *components}
    for key in ("ratio", "anonymization_share", "mask_speedup"):
        assert math.isfinite(wall[key]) and wall[key] > 0
    for key in ("ratio", "two_view_ratio", "ppa_beyond_two_views", "anonymization_share"):
        assert math.isfinite(cpu[key]) and cpu[key] > 0
    assert result["cpu_one_thread"]["threads"] == 1


def test_amp_case_times_both_precisions_on_one_modality(cfg, tmp_path):
    ctx = tiny_ctx(cfg, tmp_path)
    case = OmegaConf.create(
        {
            "model": "tiny",
            "height": 64,
            "width": 32,
            "ids": 2,
            "instances": 2,
            "ppa": "full",
            "repeats": 2,
            "warmup": 0,
        }
    )
    result = _amp_case(ctx, case, ["train.channels_last=true"])
    assert result["batch"] == 4  # one modality of the 2 x 2 x 2 batch: a site's
    assert set(result["samples"]) == {"float32", "bfloat16"}
    assert len(result["samples"]["bfloat16"]["cpu_s"]) == 2
    assert result["speedup"] == pytest.approx(
        result["median_s"]["float32"] / result["median_s"]["bfloat16"]
    )
    assert result["native_bf16"] == cpu_has_native_bf16()
    loss = result["loss"]
    # Two precisions of one forward on the same weights: close, and not the same number.
    assert 0 < loss["relative_difference"] < 0.05
    assert loss["float32"] != loss["bfloat16"]


def test_image_cache_case_times_one_sites_rounds_and_compares_their_replies(cfg, tmp_path):
    ctx = tiny_ctx(
        cfg,
        tmp_path,
        dataset={"num_train_ids": 4, "num_val_ids": 1, "num_test_ids": 2, "images_per_camera": 2},
        image_cache={
            "repeats": 2,
            "overrides": ["model=tiny", "train.max_batches_per_epoch=1", "train.num_workers=0"],
        },
    )
    result = bench_image_cache(ctx)
    assert set(result["samples"]) == {"no cache", "cache"}
    # one filling round, then two timed rounds each
    assert len(result["samples"]["cache"]["cpu_s"]) == 2
    assert result["speedup"] == pytest.approx(
        result["median_s"]["no cache"] / result["median_s"]["cache"]
    )
    # One batch of the camera-1 site: its images are in the cache, within its budget.
    assert 0 < result["cached_images"] <= result["examples"]
    assert result["cached_bytes"] == result["cached_images"] * 128 * 64 * 3
    assert result["identical_replies"] is True and result["differing"] == []
    speed, same = result["rows"]
    assert same["met"] is True and same["target"] == "identical"
    assert speed["unit"] == "x" and speed["measured"] == result["speedup"]


def test_replies_differ_names_what_differs():
    def reply(**changes) -> RoundResult:
        base = {
            "arrays": {"a": np.zeros(3, np.float32), "b": np.ones(2, np.float32)},
            "proto_sum": np.zeros((2, 4), np.float32),
            "proto_count": np.ones(2, np.float32),
            "metrics": {},
        }
        base.update(changes)
        return RoundResult(**base)

    assert replies_differ(reply(), reply()) == []
    changed = {"a": np.array([0, 0, 1e-7], np.float32), "b": np.ones(2, np.float32)}
    assert replies_differ(reply(), reply(arrays=changed)) == ["a"]
    assert replies_differ(reply(), reply(arrays={"a": np.zeros(3, np.float32)})) == ["b"]
    assert replies_differ(reply(), reply(proto_count=np.zeros(2, np.float32))) == ["proto_count"]


def test_eval_speedup_asserts_identical_numbers(cfg, tmp_path):
    ctx = tiny_ctx(
        cfg,
        tmp_path,
        eval_speedup={
            "num_query": 60,
            "num_gallery": 50,
            "num_ids": 8,
            "repeats": 2,
            "reference_repeats": 1,
        },
    )
    result = bench_eval_speedup(ctx)
    assert result["shape"] == [60, 50]
    for protocol in ("sysu", "regdb"):
        assert result[protocol]["max_abs_difference"] <= 1e-12
        assert len(result[protocol]["timings"]["vectorised"]["wall_s"]) == 2
    assert len(result["rows"]) == 2
    with pytest.raises(AssertionError, match="CMC"):
        assert_same_metrics(
            {"cmc": np.array([0.5]), "mAP": 0.1, "mINP": 0.1},
            {"cmc": np.array([0.6]), "mAP": 0.1, "mINP": 0.1},
            "x",
        )


def test_throughput_case_counts_flops(cfg, tmp_path):
    ctx = tiny_ctx(cfg, tmp_path)
    case = OmegaConf.create(
        {
            "model": "tiny",
            "height": 64,
            "width": 32,
            "train_batch": 8,
            "train_steps": 1,
            "extract_batch": 8,
            "extract_batches": 1,
        }
    )
    result = _throughput_case(ctx, case)
    assert result["forward_gflops_per_image"] > 0
    # A training step runs two views forward and backward: several forwards' worth.
    assert result["train_gflops_per_image"] > 2 * result["forward_gflops_per_image"]
    assert result["train_images_per_second"] > 0 and result["extract_images_per_second"] > 0
    assert result["device"] == "cpu" and result["amp"] is None


def test_memory_sampler_follows_a_process_tree():
    script = (
        "import subprocess, sys; subprocess.run([sys.executable, '-c', "
        "'import time; x = bytearray(64 << 20); time.sleep(1.5)'])"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    with TreeMemorySampler(proc.pid, 0.1) as sampler:
        proc.wait(timeout=60)
    assert max(s[3] for s in sampler.series) >= 2  # parent and child
    assert sampler.peak_rss >= 64 << 20 and sampler.peak_pss > 0
    assert descendants(0x7FFFFFF0) == {}  # no such process: no tree


def fake_run(tmp_path: Path, rounds: list[dict], trials: list[float]) -> object:
    out = tmp_path / "run"
    (out / "evaluation").mkdir(parents=True)
    last = rounds[-1]["round"]
    report = {"results": {"raw-raw": {"all": {"trials": [{"mAP": m} for m in trials]}}}}
    (out / "evaluation" / f"round_{last:04d}.json").write_text(json.dumps(report))
    return SimulationRun(
        "fake",
        out,
        0,
        10.0,
        {"sites": [{}, {}]},
        {"rounds": rounds},
        0,
        0,
        {},
        {},
        [],
        [],
        tmp_path / "log",
    )


def test_simulation_bookkeeping(tmp_path):
    sites = {
        "a": {"examples-seen": 100.0, "train-seconds": 2.0},
        "b": {"examples-seen": 100.0, "train-seconds": 3.0},
    }
    rounds = [
        {
            "round": r,
            "seconds": s,
            "sites": sites,
            "replied": ["a", "b"],
            "bytes_received": 2000,
            **({"central": {"raw-raw": {"mAP": 0.5, "rank1": 0.6}}} if r == 3 else {}),
        }
        for r, s in ((1, 9.0), (2, 4.0), (3, 8.0))
    ]
    run = fake_run(tmp_path, rounds, [0.4, 0.6])
    assert [r["round"] for r in clean_rounds(run)] == [2]
    sim = simulated_per_sample(run, concurrency=2)
    assert sim["round_s_per_sample"] == pytest.approx(4.0 / 200)
    assert sim["in_app_s_per_sample_per_actor"] == pytest.approx(5.0 / 200)
    assert sim["outside_training_s_per_round"] == pytest.approx(4.0 - 2.5)
    assert upload_per_site(run) == 1000
    central = central_numbers(run)
    assert central["round"] == 3 and central["raw-raw"]["mAP"] == 0.5
    assert central["raw-raw"]["mAP_standard_error"] == pytest.approx(
        np.std([0.4, 0.6], ddof=1) / 2**0.5
    )
    run.returncode = 1
    with pytest.raises(RuntimeError, match="fake"):
        run.check()


def test_results_merge_render_and_docs_markers(tmp_path):
    path = tmp_path / "bench.json"
    machine = {"cpu": "x", "logical_cpus": 2, "gpu": None, "git": "abc"}
    first = {
        "throughput": {
            "rows": [row("ips", 3.5, unit="img/s")],
            "started": "t0",
            "seconds": 1.0,
            "load_before": {"1min": 1.0},
        }
    }
    path.write_text(json.dumps(merge_results(path, machine, "cmd a", first, BENCHMARKS)))
    second = {
        "eval_speedup": {
            "rows": [row("speed", 25.0, target=">= 20x", met=True)],
            "started": "t1",
            "seconds": 2.0,
            "load_before": {"1min": 2.0},
        }
    }
    data = merge_results(path, machine, "cmd b", second, BENCHMARKS)
    assert list(data["benchmarks"]) == ["eval_speedup", "throughput"]  # canonical order
    table = render_markdown(data)
    assert "| eval_speedup | speed | >= 20x | 25 | yes |" in table
    assert "3.5 img/s" in table and "`cmd a`" in table and "`cmd b`" in table
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# B\n\nintro\n\n{DOCS_BEGIN}\nold\n{DOCS_END}\n\n## After\n")
    update_docs(docs, table)
    text = docs.read_text()
    assert "old" not in text and "intro" in text and text.rstrip().endswith("## After")
    assert text.count(DOCS_BEGIN) == 1
    fresh = tmp_path / "new.md"
    update_docs(fresh, table)
    assert DOCS_BEGIN in fresh.read_text()


@pytest.mark.slow
def test_command_line_writes_json_markdown_and_docs(tmp_path):
    docs = tmp_path / "benchmarks.md"
    code = main(
        [
            "--quick",
            "--only",
            "eval_speedup",
            f"bench.output_dir={tmp_path / 'out'}",
            f"bench.work_dir={tmp_path / 'work'}",
            f"bench.docs={docs}",
            "bench.eval_speedup.num_query=40",
            "bench.eval_speedup.num_gallery=30",
            "bench.eval_speedup.num_ids=6",
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "out" / "bench.json").read_text())
    entry = data["benchmarks"]["eval_speedup"]
    assert entry["quick"] is True and entry["machine"]["logical_cpus"] >= 1
    assert (tmp_path / "out" / "bench.md").read_text() in docs.read_text()
