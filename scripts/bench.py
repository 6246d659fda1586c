#!/usr/bin/env python
"""The performance benchmark of issue 8: six measurements in one command, as ratios taken
side by side in one run (medians over interleaved repeats), with the machine and its load.

    .venv/bin/python scripts/bench.py                       # all six (~20 min on 2 CPU cores)
    .venv/bin/python scripts/bench.py --quick               # small sizes (~3 min)
    .venv/bin/python scripts/bench.py --only eval_speedup,ppa_step_ratio
    .venv/bin/python scripts/bench.py bench.eval_speedup.repeats=9   # config overrides

Settings: configs/bench/default.yaml. Writes ``<bench.output_dir>/bench.json`` (results of
every benchmark ever run there, each with its own time, load and machine; a run replaces the
entries of the benchmarks it ran) and ``bench.md`` (the table), and rewrites the results
section of docs/benchmarks.md between its ``bench:begin`` / ``bench:end`` markers.

1. ``ppa_step_ratio``: full PPA step vs baseline step (ppa.training.step.ppa_step + backward + SGD
   step, same batch and model), plus the two-view compute reference (the baseline step on
   the raw + anonymised images concatenated) and the share of mask building, anonymisation and
   joint heatmaps, each timed alone.
2. ``federation_overhead``: seconds per trained sample in a Flower simulation round (after
   start-up, evaluation rounds left out) vs `client.site.SiteTrainer.train_round` called
   directly on the same sites and config.
3. ``eval_speedup``: ppa.eval.metrics vs ppa.eval.reference (SYSU and RegDB) on a 3803 x 3000
   distance matrix, numbers asserted identical.
4. ``upload_ratio``: bytes a site uploads per round (history.json ``bytes_received``) vs the
   full fp32 model, fp32 and half-precision transport, with both runs' central mAP.
5. ``sites_scaling``: simulations of 6, 24 and 96 sites: wall time per round and the peak
   memory of the whole process tree (sum of RSS, and of PSS, sampled from /proc).
6. ``throughput``: training and feature-extraction images/s, FLOPs per image (forward, and a
   whole training step) from torch's FlopCounterMode, achieved FLOP/s against one large
   matmul on the same device (the attainable peak).

Timings are wall-clock medians; CPU-time (process_time, all threads) medians go alongside
because the machine is shared: a ratio of CPU times is robust to other processes' load.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the client/server packages, when run as a script
    sys.path.insert(0, str(REPO))

from ppa.anonymize import KprAnonymizer  # noqa: E402
from ppa.config import load_config  # noqa: E402
from ppa.data.loader import Batch  # noqa: E402
from ppa.device import DeviceSettings  # noqa: E402
from ppa.eval import metrics  # noqa: E402
from ppa.eval import reference as metrics_reference  # noqa: E402
from ppa.eval.features import extract_features  # noqa: E402
from ppa.model import PPAEncoder, create_model  # noqa: E402
from ppa.pose.heatmaps import head_mask, joint_heatmaps, skeleton_mask  # noqa: E402
from ppa.pose.prior import canonical_keypoints  # noqa: E402
from ppa.prototypes import IdentityPrototypes  # noqa: E402
from ppa.training.loop import train_one_epoch  # noqa: E402
from ppa.training.objective import PPAObjective  # noqa: E402
from ppa.training.optim import create_optimizer  # noqa: E402
from ppa.training.step import StepContext, ppa_step  # noqa: E402
from ppa.wire import global_keys, pack  # noqa: E402

logger = logging.getLogger("bench")

BENCHMARKS = (
    "ppa_step_ratio",
    "federation_overhead",
    "eval_speedup",
    "upload_ratio",
    "sites_scaling",
    "throughput",
)
DOCS_BEGIN = "<!-- bench:begin (written by scripts/bench.py; edit outside the markers) -->"
DOCS_END = "<!-- bench:end -->"
# Keypoint jitter and crop shift of the synthetic batches, as fractions of the image height:
# the spread of augmented pedestrian crops (pad 10 px of 288, pose variation).
KEYPOINT_JITTER = 0.03
KEYPOINT_SHIFT = 10 / 288
MISSING_JOINTS = 0.1  # fraction of joints reported with score 0
# The process name of a simulated site's Ray actor (Flower's ClientApp actor).
ACTOR_PROCESS = "ray::ClientAppActor"


# ---------------------------------------------------------------------------------------------
# Machine, load and timing
# ---------------------------------------------------------------------------------------------
def load_average() -> dict[str, float]:
    """`uptime`'s 1/5/15-minute load averages."""
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": None,
        "gpu": None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "git": git_revision(),
        "load_at_start": load_average(),
    }
    with contextlib.suppress(OSError, ValueError, IndexError):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        info["memory_gib"] = round(int(meminfo[0].split()[1]) / 2**20, 1)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(ImportError):
        import flwr

        info["flwr"] = flwr.__version__
    return info


def git_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+dirty' if dirty else ''}"


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class Samples:
    """Wall-clock and CPU (process_time: all threads) seconds of repeated calls."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)

    def summary(self) -> dict[str, Any]:
        return {
            "median_wall_s": self.median_wall,
            "median_cpu_s": self.median_cpu,
            "wall_s": [round(v, 6) for v in self.wall],
            "cpu_s": [round(v, 6) for v in self.cpu],
        }


def time_call(
    fn: Callable[[], Any], cpu_clock: Callable[[], float] = time.process_time
) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds, result) of one call, the device synchronised around it.

    `cpu_clock`: process_time (every thread of the process; with several intra-op threads it
    also counts their spin-waiting) or thread_time (this thread: exact with one thread).
    """
    synchronize()
    wall, cpu = time.perf_counter(), cpu_clock()
    result = fn()
    synchronize()
    return time.perf_counter() - wall, cpu_clock() - cpu, result


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run a block with `count` intra-op threads (None: unchanged)."""
    old = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    repeats: int,
    *,
    warmup: int = 1,
    desc: str = "",
    cpu_clock: Callable[[], float] = time.process_time,
) -> dict[str, Samples]:
    """Time every candidate `repeats` times, round-robin (so load changes hit all alike),
    after `warmup` untimed calls each."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    samples = {name: Samples() for name in candidates}
    for _ in tqdm(range(repeats), desc=desc, leave=False):
        for name, fn in candidates.items():
            wall, cpu, _ = time_call(fn, cpu_clock)
            samples[name].wall.append(wall)
            samples[name].cpu.append(cpu)
    return samples


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def row(
    metric: str,
    measured: float | None,
    *,
    target: str = "",
    met: bool | None = None,
    unit: str = "",
    note: str = "",
) -> dict[str, Any]:
    """One line of the results table."""
    return {
        "metric": metric,
        "measured": measured,
        "unit": unit,
        "target": target,
        "met": met,
        "note": note,
    }


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
def load_bench_config(overrides: Sequence[str] = (), quick: bool = False) -> DictConfig:
    """The root config with the `bench` group (configs/bench/default.yaml) composed in; with
    `quick`, `bench.quick` merged over `bench`."""
    overrides = list(overrides)
    if "bench" not in load_config([]):  # not (yet) in configs/config.yaml's defaults list
        overrides.insert(0, "+bench=default")
    cfg = load_config(overrides)
    if quick and cfg.bench.get("quick") is not None:
        bench = OmegaConf.merge(cfg.bench, cfg.bench.quick)
        OmegaConf.set_struct(cfg, False)
        cfg.bench = bench
    return cfg


def anchored(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO / p


@dataclass
class BenchContext:
    """What every benchmark gets: the composed config, its folders and the shared state."""

    cfg: DictConfig
    quick: bool
    output_dir: Path
    work_dir: Path
    shared: dict[str, Any] = field(default_factory=dict)  # e.g. the fp32 simulation

    @property
    def bench(self) -> DictConfig:
        return self.cfg.bench


# ---------------------------------------------------------------------------------------------
# Synthetic batches, models and step contexts
# ---------------------------------------------------------------------------------------------
def synthetic_batch(ids: int, instances: int, height: int, width: int, seed: int) -> Batch:
    """A batch as the identity sampler lays it out: P ids x K images per modality, both
    modalities, random images, canonical keypoints jittered and shifted like augmented crops,
    a tenth of the joints missing."""
    gen = torch.Generator().manual_seed(seed)
    per_modality = ids * instances
    size = 2 * per_modality
    keypoints = torch.from_numpy(canonical_keypoints(height, width)).expand(size, -1, -1).clone()
    keypoints[..., :2] += torch.randn(size, 17, 2, generator=gen) * KEYPOINT_JITTER * height
    keypoints[..., :2] += (
        (torch.rand(size, 1, 2, generator=gen) - 0.5) * 2 * (KEYPOINT_SHIFT * height)
    )
    keypoints[..., 2] = 0.5 + 0.5 * torch.rand(size, 17, generator=gen)
    keypoints[..., 2] *= torch.rand(size, 17, generator=gen) >= MISSING_JOINTS
    labels = torch.arange(ids).repeat_interleave(instances).repeat(2)
    return Batch(
        images=torch.rand(size, 3, height, width, generator=gen),
        keypoints=keypoints,
        labels=labels,
        modality=torch.arange(2).repeat_interleave(per_modality),
        cams=torch.ones(size, dtype=torch.long),
        seeds=torch.randint(0, 2**31 - 1, (size,), generator=gen),
        indices=torch.arange(size),
    )


def model_config(model: str, height: int, width: int, *extra: str) -> DictConfig:
    # No ImageNet download: the weights do not change the cost of a step.
    return load_config(
        [
            f"model={model}",
            "model.pretrained=false",
            f"input.height={height}",
            f"input.width={width}",
            *extra,
        ]
    )


def step_context(
    cfg: DictConfig,
    model: PPAEncoder,
    device: DeviceSettings,
    anonymizer: KprAnonymizer | None,
    ppa_name: str,
    num_classes: int,
) -> StepContext:
    """A StepContext for `configs/ppa/<ppa_name>.yaml`, with server-like prototypes for every
    identity so L_align is active in the full objective."""
    objective = PPAObjective.from_config(load_config([f"ppa={ppa_name}"]).ppa)
    prototypes = None
    if objective.uses("align"):
        gen = torch.Generator().manual_seed(1)
        sums = torch.randn(2, num_classes, model.num_features, generator=gen)
        prototypes = IdentityPrototypes.from_sums(sums, torch.ones(2, num_classes)).to(
            device.device
        )
    return StepContext.from_config(
        cfg,
        model=model,
        objective=objective,
        anonymizer=anonymizer if objective.anonymized_view else None,
        device=device,
        prototypes=prototypes,
    )


def build_model(cfg: DictConfig, num_classes: int, device: DeviceSettings) -> PPAEncoder:
    torch.manual_seed(int(cfg.seed))
    model = create_model(cfg.model, num_classes).to(device.device)
    if device.channels_last:
        # DeviceSettings.prepare only converts the inputs; the weights must follow for cuDNN
        # to pick its channels-last kernels.
        model = model.to(memory_format=torch.channels_last)
    return model


def train_step(ctx: StepContext, batch: Batch, optimizer: torch.optim.Optimizer) -> None:
    """What train_one_epoch does per batch: ppa_step, backward, optimiser step."""
    loss, _ = ppa_step(ctx, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def full_frame_masks(
    anonymizer: KprAnonymizer, keypoints: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """The KPR masks as built before the windowed skeleton (the 'before' of that fast path):
    kpr_masks with every limb evaluated over the whole frame."""
    s = anonymizer.mask_settings
    head = head_mask(
        keypoints, height, width, min_confidence=s.min_confidence, head_scale=s.head_scale
    )
    skeleton = skeleton_mask(
        keypoints,
        height,
        width,
        min_confidence=s.min_confidence,
        limb_width=s.limb_width,
        smooth_sigma=s.smooth_sigma,
        windowed=False,
    )
    return torch.minimum(skeleton, 1.0 - head)


# ---------------------------------------------------------------------------------------------
# 1. ppa_step_ratio
# ---------------------------------------------------------------------------------------------
def bench_ppa_step_ratio(ctx: BenchContext) -> dict[str, Any]:
    settings = ctx.bench.ppa_step
    target = float(settings.target)
    share_target = float(settings.component_target)
    cases, rows = [], []
    for case in settings.cases:
        result = _ppa_step_case(ctx, case, int(settings.component_repeats))
        cases.append(result)
        name = f"{case.model} {case.height}x{case.width} b{result['batch']}"
        wall, cpu = result["wall"], result["cpu_one_thread"]
        # Ratios and shares in one-thread CPU time: on a shared machine the wall time at
        # several threads swings by up to 10x between repeats (an OpenMP barrier waits for a
        # thread whose core is taken), so the wall numbers are kept in the JSON and the note.
        rows.append(
            row(
                f"step ratio full/baseline, {name}",
                cpu["ratio"],
                target=f"<= {target}",
                met=cpu["ratio"] <= target,
                note=(
                    f"one-thread CPU time; = two views alone (the baseline step on raw + "
                    f"anonymised images) {cpu['two_view_ratio']:.2f} x the rest of PPA "
                    f"{cpu['ppa_beyond_two_views']:.2f}. Wall clock at {wall['threads']} "
                    f"threads: {wall['ratio']:.2f} (median of {case.repeats}; "
                    f"{wall['median_s']['baseline']:.2f} s vs {wall['median_s']['full']:.2f} s)"
                ),
            )
        )
        share = cpu["anonymization_share"]
        rows.append(
            row(
                f"masks + anonymisation share of the full step, {name}",
                100 * share,
                unit="%",
                target=f"<= {100 * share_target:.0f} %",
                met=share <= share_target,
                note=(
                    f"one-thread CPU time; masks {100 * cpu['mask_share']:.2f} %, with the "
                    f"full-frame skeleton "
                    f"(before the fast path) {100 * cpu['mask_share_before']:.2f} % "
                    f"({cpu['mask_speedup']:.1f}x); heatmaps {100 * cpu['heatmap_share']:.3f} %"
                ),
            )
        )
    return {"cases": cases, "rows": rows}


def _ppa_step_case(ctx: BenchContext, case: DictConfig, component_repeats: int) -> dict:
    height, width = int(case.height), int(case.width)
    cfg = model_config(str(case.model), height, width)
    device = DeviceSettings.from_config(cfg)
    num_classes = 2 * int(case.ids)
    batch = synthetic_batch(
        int(case.ids), int(case.instances), height, width, int(ctx.bench.seed)
    ).to(device.device)
    model = build_model(cfg, num_classes, device)
    model.train()
    anonymizer = KprAnonymizer.from_config(cfg).to(device.device)
    optimizer = create_optimizer(model, cfg.train.optimizer)
    contexts = {
        name: step_context(cfg, model, device, anonymizer, name, num_classes)
        for name in ("baseline", "full")
    }
    with torch.no_grad():
        anonymized = anonymizer(batch.images, batch.keypoints, batch.seeds).images
    # The two-view compute reference: the baseline step on raw + anonymised images at once.
    doubled = Batch(
        images=torch.cat([batch.images, anonymized]),
        keypoints=batch.keypoints.repeat(2, 1, 1),
        labels=batch.labels.repeat(2),
        modality=batch.modality.repeat(2),
        cams=batch.cams.repeat(2),
        seeds=batch.seeds.repeat(2),
        indices=batch.indices.repeat(2),
    )
    label = f"{case.model} {height}x{width} b{len(batch)}"
    steps = {
        "baseline": lambda: train_step(contexts["baseline"], batch, optimizer),
        "full": lambda: train_step(contexts["full"], batch, optimizer),
        "two_view_baseline": lambda: train_step(contexts["baseline"], doubled, optimizer),
    }
    fh, fw = model.feature_size(height, width)
    s = anonymizer.mask_settings
    components = {
        "masks": lambda: anonymizer.masks(batch.keypoints, height, width),
        "masks_full_frame": lambda: full_frame_masks(anonymizer, batch.keypoints, height, width),
        "anonymization": lambda: anonymizer(batch.images, batch.keypoints, batch.seeds),
        "heatmaps": lambda: joint_heatmaps(
            batch.keypoints,
            fh,
            fw,
            sigma=float(cfg.pose.heatmap_sigma),
            min_confidence=s.min_confidence,
            scale=fh / height,
        ),
    }
    repeats = int(case.repeats)
    cpu_repeats = int(case.get("cpu_repeats", repeats))
    phases = {}
    # Wall clock at the configured threads (what a run sees), then one thread with that
    # thread's CPU clock: exact work, unaffected by other processes taking the cores.
    for phase, threads, clock, n, warmup in (
        ("wall", None, time.process_time, repeats, 1),
        ("cpu_one_thread", 1, time.thread_time, cpu_repeats, 0),  # warm from the first phase
    ):
        logger.info("ppa_step_ratio: %s, %s, %d interleaved repeats", label, phase, n)
        # The two-view reference answers a question about work (is the full step two views
        # and little more?): timed on the one-thread CPU clock only, which saves wall time.
        candidates = (
            steps
            if phase != "wall"
            else {k: v for k, v in steps.items() if k != "two_view_baseline"}
        )
        with torch_threads(threads):
            timed = interleaved(
                candidates, n, warmup=warmup, desc=f"steps {label} {phase}", cpu_clock=clock
            )
            with torch.no_grad():
                timed.update(
                    interleaved(
                        components,
                        component_repeats,
                        desc=f"components {label} {phase}",
                        cpu_clock=clock,
                    )
                )
        median = {k: (v.median_wall if phase == "wall" else v.median_cpu) for k, v in timed.items()}
        full = median["full"]
        phases[phase] = {
            "threads": threads or torch.get_num_threads(),
            "clock": "perf_counter" if phase == "wall" else "thread_time",
            "samples": {k: v.summary() for k, v in timed.items()},
            "median_s": median,
            "ratio": ratio(full, median["baseline"]),
            "two_view_ratio": ratio(median.get("two_view_baseline", math.nan), median["baseline"]),
            "ppa_beyond_two_views": ratio(full, median.get("two_view_baseline", math.nan)),
            "mask_share": ratio(median["masks"], full),
            "mask_share_before": ratio(median["masks_full_frame"], full),
            "mask_speedup": ratio(median["masks_full_frame"], median["masks"]),
            "anonymization_share": ratio(median["anonymization"], full),
            "heatmap_share": ratio(median["heatmaps"], full),
        }
    with torch.no_grad():
        same = torch.equal(
            anonymizer.masks(batch.keypoints, height, width).skeleton,
            full_frame_masks(anonymizer, batch.keypoints, height, width),
        )
    return {
        "model": str(case.model),
        "input": [height, width],
        "batch": len(batch),
        "device": str(device.device),
        **phases,
        "windowed_masks_identical": bool(same),
        "load": load_average(),
    }


# ---------------------------------------------------------------------------------------------
# 3. eval_speedup
# ---------------------------------------------------------------------------------------------
def sysu_like_problem(settings: DictConfig, seed: int) -> dict[str, Any]:
    """Distances between SYSU-shaped queries (IR cams 3/6) and gallery (visible cams 1/2/4/5):
    features around per-identity centres, cosine distances in float32 as evaluation makes."""
    rng = np.random.default_rng(seed)
    num_q, num_g, num_ids = (
        int(settings.num_query),
        int(settings.num_gallery),
        int(settings.num_ids),
    )
    ids = np.arange(1, num_ids + 1)
    q_pids = rng.choice(ids, num_q)
    g_pids = np.concatenate([ids, rng.choice(ids, num_g - num_ids)])[:num_g]  # every id present
    rng.shuffle(g_pids)
    centres = rng.normal(size=(num_ids + 1, int(settings.feature_dim))).astype(np.float32)
    noise = float(settings.noise)
    q_feats = centres[q_pids] + noise * rng.normal(size=(num_q, centres.shape[1]))
    g_feats = centres[g_pids] + noise * rng.normal(size=(num_g, centres.shape[1]))
    dist = metrics.pairwise_distance(
        torch.from_numpy(q_feats.astype(np.float32)), torch.from_numpy(g_feats.astype(np.float32))
    )
    return {
        "dist": dist,
        "q_pids": q_pids,
        "g_pids": g_pids,
        "q_cams": rng.choice([3, 6], num_q),
        "g_cams": rng.choice([1, 2, 4, 5], num_g),
    }


def assert_same_metrics(fast: Mapping[str, Any], slow: Mapping[str, Any], what: str) -> float:
    """Raise unless the two results agree (CMC exactly, mAP/mINP to float64 rounding); returns
    the largest difference."""
    if not np.array_equal(np.asarray(fast["cmc"]), np.asarray(slow["cmc"])):
        raise AssertionError(f"{what}: the CMC curves differ")
    diff = max(abs(fast["mAP"] - slow["mAP"]), abs(fast["mINP"] - slow["mINP"]))
    if diff > 1e-12:
        raise AssertionError(f"{what}: mAP/mINP differ by {diff:.3g}")
    return diff


def bench_eval_speedup(ctx: BenchContext) -> dict[str, Any]:
    settings = ctx.bench.eval_speedup
    problem = sysu_like_problem(settings, int(ctx.bench.seed))
    dist, q_pids, g_pids = problem["dist"], problem["q_pids"], problem["g_pids"]
    q_cams, g_cams = problem["q_cams"], problem["g_cams"]
    dist_np = dist.numpy()
    target = float(settings.target)
    out: dict[str, Any] = {"shape": list(dist.shape), "rows": []}
    protocols = {
        "sysu": (
            lambda: metrics.sysu_metrics(dist, q_pids, g_pids, q_cams, g_cams),
            lambda: metrics_reference.sysu_metrics(dist_np, q_pids, g_pids, q_cams, g_cams),
            lambda: _sort_path(dist, q_pids, g_pids, q_cams, g_cams),
        ),
        "regdb": (
            lambda: metrics.regdb_metrics(dist, q_pids, g_pids),
            lambda: metrics_reference.regdb_metrics(dist_np, q_pids, g_pids),
            lambda: _sort_path(dist, q_pids, g_pids, None, None),
        ),
    }
    repeats, ref_repeats = int(settings.repeats), int(settings.reference_repeats)
    for name, (fast, slow, before) in protocols.items():
        logger.info("eval_speedup: %s, %d x %d", name, *dist.shape)
        # The reference is slow: it gets fewer repeats, each interleaved with a few fast runs;
        # every call's result is kept and checked, so the check costs no extra run.
        timings = {"vectorised": Samples(), "reference": Samples(), "sort_path": Samples()}
        outputs: dict[str, list[dict]] = {k: [] for k in timings}
        per_round = max(1, math.ceil(repeats / ref_repeats))
        for _ in tqdm(range(ref_repeats), desc=f"eval {name}", leave=False):
            calls = [("reference", slow), ("sort_path", before)] + [("vectorised", fast)] * (
                per_round
            )
            for label, fn in calls:
                wall, cpu, result = time_call(fn)
                timings[label].wall.append(wall)
                timings[label].cpu.append(cpu)
                outputs[label].append(result)
        slow_result = outputs["reference"][0]
        diff = max(
            assert_same_metrics(r, slow_result, f"{name} vectorised vs reference")
            for r in outputs["vectorised"]
        )
        for r in outputs["sort_path"]:
            assert_same_metrics(r, slow_result, f"{name} sort path vs reference")
        fast_result = outputs["vectorised"][0]
        speedup = ratio(timings["reference"].median_wall, timings["vectorised"].median_wall)
        speedup_cpu = ratio(timings["reference"].median_cpu, timings["vectorised"].median_cpu)
        before_speedup = ratio(timings["reference"].median_wall, timings["sort_path"].median_wall)
        out[name] = {
            "timings": {k: v.summary() for k, v in timings.items()},
            "speedup_wall": speedup,
            "speedup_cpu": speedup_cpu,
            "speedup_before_fast_path_wall": before_speedup,
            "max_abs_difference": diff,
            "mAP": fast_result["mAP"],
            "rank1": float(fast_result["cmc"][0]),
            "load": load_average(),
        }
        out["rows"].append(
            row(
                f"{name.upper()} metrics speed-up vs per-query loop",
                speedup,
                unit="x",
                target=f">= {target:g}x",
                met=speedup >= target,
                note=(
                    f"{timings['vectorised'].median_wall * 1e3:.0f} ms vs "
                    f"{timings['reference'].median_wall:.2f} s; CPU-time {speedup_cpu:.1f}x; "
                    f"before the key-sort path {before_speedup:.1f}x; identical numbers"
                ),
            )
        )
    return out


def _sort_path(dist: torch.Tensor, q_pids: Any, g_pids: Any, q_cams: Any, g_cams: Any) -> dict:
    """The metrics through the stable-argsort path (the implementation before the key-sort
    fast path; still what GPU and float64 distances take)."""
    dist_t, q_pid_t, g_pid_t = metrics._prepare(dist, q_pids, g_pids, 20)
    keep = None
    if q_cams is not None:
        query_cam, gallery_cam = metrics.SYSU_REMOVED_PAIR
        keep = ~(
            (torch.as_tensor(np.asarray(q_cams)) == query_cam)[:, None]
            & (torch.as_tensor(np.asarray(g_cams)) == gallery_cam)[None, :]
        )
    return metrics._evaluate_by_sort(
        dist_t, q_pid_t, g_pid_t, keep, dedup=q_cams is not None, max_rank=20
    )


# ---------------------------------------------------------------------------------------------
# 6. throughput
# ---------------------------------------------------------------------------------------------
def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call (matmuls and convolutions, 2 per multiply-add), torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def gemm_peak(size: int, device: DeviceSettings, repeats: int = 5) -> dict[str, Any]:
    """FLOP/s of one square matmul: the attainable peak of this device and dtype."""
    dtype = device.amp_dtype or torch.float32
    a = torch.randn(size, size, device=device.device, dtype=dtype)
    b = torch.randn(size, size, device=device.device, dtype=dtype)
    samples = interleaved({"mm": lambda: torch.mm(a, b)}, repeats, desc="gemm")["mm"]
    flops = 2 * size**3
    return {
        "size": size,
        "dtype": str(dtype),
        "median_wall_s": samples.median_wall,
        "flops_per_second": flops / samples.median_wall,
    }


def bench_throughput(ctx: BenchContext) -> dict[str, Any]:
    settings = ctx.bench.throughput
    out: dict[str, Any] = {"cases": [], "rows": []}
    base_device = DeviceSettings.from_config(ctx.cfg)
    peak = gemm_peak(int(settings.gemm_size), base_device)
    out["gemm_peak"] = peak
    for case in settings.cases:
        result = _throughput_case(ctx, case)
        result["train_fraction_of_gemm_peak"] = ratio(
            result["train_flops_per_second"], peak["flops_per_second"]
        )
        result["extract_fraction_of_gemm_peak"] = ratio(
            result["extract_flops_per_second"], peak["flops_per_second"]
        )
        out["cases"].append(result)
        name = f"{case.model} {case.height}x{case.width}"
        where = result["device"] + (f" {result['amp']}" if result["amp"] else "")
        out["rows"].append(
            row(
                f"training images/s (full PPA step), {name}",
                result["train_images_per_second"],
                unit="img/s",
                note=(
                    f"{where}, batch {case.train_batch}; {result['train_gflops_per_image']:.2f} "
                    f"GFLOP per image per step, {result['train_flops_per_second'] / 1e9:.1f} "
                    f"GFLOP/s = {100 * result['train_fraction_of_gemm_peak']:.0f} % of the "
                    f"{peak['flops_per_second'] / 1e9:.0f} GFLOP/s matmul peak"
                ),
            )
        )
        out["rows"].append(
            row(
                f"feature extraction images/s, {name}",
                result["extract_images_per_second"],
                unit="img/s",
                note=(
                    f"{where}, batch {case.extract_batch}; {result['forward_gflops_per_image']:.2f}"
                    f" GFLOP forward per image, {result['extract_flops_per_second'] / 1e9:.1f} "
                    f"GFLOP/s = {100 * result['extract_fraction_of_gemm_peak']:.0f} % of peak"
                ),
            )
        )
    return out


def _throughput_case(ctx: BenchContext, case: DictConfig) -> dict[str, Any]:
    height, width = int(case.height), int(case.width)
    cfg = model_config(str(case.model), height, width, f"device={ctx.cfg.device}")
    device = DeviceSettings.from_config(cfg)
    train_batch = int(case.train_batch)
    num_classes = max(16, int(case.extract_batch) // 8, train_batch // 8)
    batch = synthetic_batch(max(1, train_batch // 8), 4, height, width, int(ctx.bench.seed))
    model = build_model(cfg, num_classes, device)
    anonymizer = KprAnonymizer.from_config(cfg).to(device.device)
    step_ctx = step_context(cfg, model, device, anonymizer, "full", num_classes)
    optimizer = create_optimizer(model, cfg.train.optimizer)
    label = f"{case.model} {height}x{width}"
    logger.info(
        "throughput: %s on %s (amp %s, channels-last %s)",
        label,
        device.device,
        device.amp_dtype,
        device.channels_last,
    )
    # The warm-up step (allocator, kernel selection) is the one whose FLOPs are counted.
    device_batch = batch.to(device.device)
    step_flops = count_flops(lambda: train_step(step_ctx, device_batch, optimizer))
    synchronize()
    train = train_one_epoch(
        step_ctx, [batch] * int(case.train_steps), optimizer, progress=True, desc=f"train {label}"
    )
    extract_batch = synthetic_batch(
        max(1, int(case.extract_batch) // 8), 4, height, width, int(ctx.bench.seed) + 1
    )
    loader = [extract_batch] * int(case.extract_batches)
    common = {"device": device, "mean": tuple(cfg.input.mean), "std": tuple(cfg.input.std)}
    extract_features(model, loader[:1], progress=False, **common)
    wall, cpu, _ = time_call(
        lambda: extract_features(model, loader, progress=True, desc=f"extract {label}", **common)
    )
    images = len(extract_batch) * len(loader)
    model.eval()
    one = extract_batch.images[:1].to(device.device)
    one_modality = extract_batch.modality[:1].to(device.device)
    with torch.no_grad():
        forward_flops = count_flops(lambda: model(one, one_modality))
    model.train()
    train_ips = float(train["images_per_second"])
    extract_ips = images / wall
    return {
        "model": str(case.model),
        "input": [height, width],
        "device": str(device.device),
        "amp": str(device.amp_dtype) if device.amp_dtype else None,
        "channels_last": device.channels_last,
        "threads": torch.get_num_threads(),
        "train_batch": len(batch),
        "train_steps": int(case.train_steps),
        "train_seconds": float(train["seconds"]),
        "train_images_per_second": train_ips,
        "extract_images": images,
        "extract_seconds": wall,
        "extract_cpu_seconds": cpu,
        "extract_images_per_second": extract_ips,
        "forward_gflops_per_image": forward_flops / 1e9,
        "train_gflops_per_image": step_flops / len(batch) / 1e9,
        "train_flops_per_second": step_flops / len(batch) * train_ips,
        "extract_flops_per_second": forward_flops * extract_ips,
        "load": load_average(),
    }


# ---------------------------------------------------------------------------------------------
# Simulations: data, launching, memory sampling
# ---------------------------------------------------------------------------------------------
def synthetic_root(ctx: BenchContext, params: Mapping[str, Any]) -> Path:
    """The benchmark's own synthetic SYSU set with these writer parameters (written once; the
    folder name hashes them, so sets of other sizes never collide with it or with data/)."""
    from ppa.synthetic.writer import write_synthetic_sysu

    params = dict(sorted(params.items()))
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    root = ctx.work_dir / "data" / f"sysu-{digest}"
    if not (root / "synthetic.json").is_file():
        logger.info("writing the synthetic set %s (%s)", root, params)
        write_synthetic_sysu(root, overwrite=True, **params)
    return root


def dataset_params(base: DictConfig, extra: DictConfig | None = None) -> dict[str, Any]:
    params = OmegaConf.to_container(base, resolve=True)
    if extra is not None:
        params.update(OmegaConf.to_container(extra, resolve=True))
    return params  # type: ignore[return-value]


def read_proc_tree(root: int) -> list[int]:
    """`root` and every process below it (from /proc/<pid>/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def process_memory(pid: int) -> tuple[int, int, str]:
    """(RSS bytes, PSS bytes, command name) of one process; zeros if it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return 0, 0, ""
    return rss, pss, Path(cmdline).name if cmdline else ""


class TreeMemorySampler:
    """Samples the summed RSS and PSS of a process tree every `interval` seconds, in a thread.

    RSS counts shared pages once per process (the sum the issue asks for); PSS splits them,
    so its sum is what the tree really occupies. Ray workers name themselves ``ray::...``;
    their count shows how many sites run at once.
    """

    def __init__(self, root: int, interval: float):
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = 0
        self.peak_processes: list[dict[str, Any]] = []
        self.ray_processes: dict[str, int] = {}  # Ray process name -> most seen at once
        self.peak_rss_by_name: dict[str, int] = {}  # name -> largest summed RSS of its kind
        self.series: list[tuple[float, int, int, int]] = []  # (t, rss, pss, processes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        per_process = [(pid, *process_memory(pid)) for pid in read_proc_tree(self.root)]
        rss = sum(p[1] for p in per_process)
        pss = sum(p[2] for p in per_process)
        counts: dict[str, int] = {}
        for p in per_process:
            if p[3].startswith("ray::"):
                counts[p[3]] = counts.get(p[3], 0) + 1
        for name, count in counts.items():
            self.ray_processes[name] = max(self.ray_processes.get(name, 0), count)
        by_name: dict[str, int] = {}
        for p in per_process:
            by_name[p[3]] = by_name.get(p[3], 0) + p[1]
        for name, total in by_name.items():
            self.peak_rss_by_name[name] = max(self.peak_rss_by_name.get(name, 0), total)
        self.series.append((round(time.monotonic() - self._start, 2), rss, pss, len(per_process)))
        if rss > self.peak_rss:
            self.peak_rss = rss
            top = sorted(per_process, key=lambda p: -p[1])[:8]
            self.peak_processes = [{"name": p[3], "rss_mib": round(p[1] / 2**20, 1)} for p in top]
        self.peak_pss = max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                self.sample()
            self._stop.wait(self.interval)


@dataclass
class SimulationRun:
    """One `scripts/run_simulation.py` launch and what it left behind."""

    label: str
    output_dir: Path
    returncode: int
    wall_s: float
    summary: dict[str, Any]
    history: dict[str, Any]
    peak_rss: int
    peak_pss: int
    ray_processes: dict[str, int]
    peak_rss_by_name: dict[str, int]
    peak_processes: list[dict[str, Any]]
    memory_series: list[tuple[float, int, int, int]]
    log: Path

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return [r for r in self.history.get("rounds", []) if r.get("round", 0) > 0]

    def check(self) -> None:
        if self.returncode != 0 or not self.rounds:
            raise RuntimeError(
                f"simulation {self.label} failed (exit {self.returncode}, status "
                f"{self.summary.get('status')}); see {self.log}"
            )


def run_simulation(
    ctx: BenchContext,
    label: str,
    experiment: str,
    overrides: Sequence[str],
    *,
    timeout: float,
    sample_interval: float = 0.5,
) -> SimulationRun:
    """Launch a Flower simulation (its own SuperLink, stopped afterwards) and sample its
    process tree's memory until it ends."""
    out = ctx.work_dir / "runs" / label
    if out.exists():  # only ever a folder of this benchmark's own work dir
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log_path = ctx.output_dir / "logs" / f"{label}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "run_simulation.py"),
        "--experiment",
        experiment,
        "--timeout",
        str(timeout),
        *overrides,
        f"output_dir={out}",
        f"run_name=bench-{label}",
    ]
    env = dict(os.environ, PPA_WORKDIR=str(REPO), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    logger.info("simulation %s: %s", label, " ".join(cmd[2:]))
    start = time.perf_counter()
    with (
        open(log_path, "w") as log,
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT) as proc,
        TreeMemorySampler(proc.pid, sample_interval) as sampler,
    ):
        try:
            returncode = proc.wait(timeout=timeout + 120)
        except subprocess.TimeoutExpired:
            # run_simulation stops everything it started on SIGTERM.
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=120)
    wall = time.perf_counter() - start
    summary = _read_json(out / "simulation.json")
    history = _read_json(out / "history.json")
    run = SimulationRun(
        label,
        out,
        returncode,
        wall,
        summary,
        history,
        sampler.peak_rss,
        sampler.peak_pss,
        sampler.ray_processes,
        sampler.peak_rss_by_name,
        sampler.peak_processes,
        sampler.series,
        log_path,
    )
    logger.info(
        "simulation %s: exit %d after %.0f s, peak RSS %.0f MiB (PSS %.0f MiB)",
        label,
        returncode,
        wall,
        run.peak_rss / 2**20,
        run.peak_pss / 2**20,
    )
    return run


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def concurrent_sites(cfg: DictConfig, num_sites: int) -> int:
    """Sites Ray runs at once: CPUs / federation.resources.num_cpus, at most the site count."""
    per_site = max(1, int(cfg.federation.resources.num_cpus))
    return max(1, min(num_sites, (os.cpu_count() or 1) // per_site))


# ---------------------------------------------------------------------------------------------
# 2. federation_overhead (+ the fp32 run of 4. upload_ratio)
# ---------------------------------------------------------------------------------------------
def federation_overrides(ctx: BenchContext) -> tuple[str, list[str]]:
    """Experiment and overrides shared by the federation_overhead and upload_ratio runs."""
    settings = ctx.bench.federation_overhead
    root = synthetic_root(ctx, dataset_params(ctx.bench.dataset))
    overrides = [
        f"dataset.root={root}",
        f"federation.rounds={int(settings.rounds)}",
        "federation.evaluate_initial=false",
        # Evaluate only after the last round, which the timing leaves out.
        "federation.evaluate_every=1000",
        *settings.overrides,
    ]
    return str(settings.experiment), overrides


def fp32_simulation(ctx: BenchContext) -> SimulationRun:
    """The fp32 federation run, shared by federation_overhead and upload_ratio."""
    if "fp32_run" not in ctx.shared:
        experiment, overrides = federation_overrides(ctx)
        run = run_simulation(
            ctx,
            "federation-fp32",
            experiment,
            overrides,
            timeout=float(ctx.bench.federation_overhead.timeout),
            sample_interval=float(ctx.bench.federation_overhead.sample_interval),
        )
        run.check()
        ctx.shared["fp32_run"] = run
    return ctx.shared["fp32_run"]


def clean_rounds(run: SimulationRun) -> list[dict[str, Any]]:
    """Rounds after start-up (round 1) without central evaluation."""
    return [r for r in run.rounds if r["round"] > 1 and not r.get("central")]


def simulated_per_sample(run: SimulationRun, concurrency: int) -> dict[str, Any]:
    """Seconds per trained sample in the simulation's clean rounds: round wall time (server
    side: send, train, receive, aggregate, checkpoint) / examples, and the sites' own
    train-seconds / examples-seen (per actor; divided by the concurrency for the machine)."""
    rounds = clean_rounds(run)
    if not rounds:
        raise RuntimeError(f"simulation {run.label}: no clean round (need >= 3 rounds)")
    per_round, in_app, outside = [], [], []
    for r in rounds:
        examples = sum(float(m.get("examples-seen", 0.0)) for m in r["sites"].values())
        train_seconds = sum(float(m.get("train-seconds", 0.0)) for m in r["sites"].values())
        per_round.append(r["seconds"] / examples)
        in_app.append(train_seconds / examples)
        outside.append(max(0.0, r["seconds"] - train_seconds / concurrency))
    return {
        "rounds": [r["round"] for r in rounds],
        "round_seconds": [r["seconds"] for r in rounds],
        "round_s_per_sample": statistics.median(per_round),
        "in_app_s_per_sample_per_actor": statistics.median(in_app),
        "in_app_s_per_sample": statistics.median(in_app) / concurrency,
        "outside_training_s_per_round": statistics.median(outside),
        "outside_training_share": statistics.median(
            o / r["seconds"] for o, r in zip(outside, rounds, strict=True)
        ),
    }


def _direct_worker(
    conn: Any, experiment: str, overrides: list[str], sites: list[int], threads: int
) -> None:
    """A process that holds `SiteTrainer`s for some sites (simulation partition ids) and
    trains them, in order, for each round number it receives; None ends it."""
    from client.node_config import NodeSite
    from client.site import SiteTrainer
    from ppa.data.partition import site_layout
    from ppa.data.protocols import load_label_space, protocol_of

    torch.set_num_threads(threads)
    cfg = load_config([f"experiment={experiment}", *overrides])
    fed = cfg.federation
    layout = site_layout(
        str(fed.partition),
        protocol=protocol_of(cfg.dataset),
        sites_per_modality=int(fed.sites_per_modality),
    )
    torch.manual_seed(int(cfg.seed))  # the arrays the server sends in round 1
    state = create_model(cfg.model, len(load_label_space(cfg.dataset))).state_dict()
    arrays = pack(state, global_keys(state))
    trainers = {i: SiteTrainer(cfg, NodeSite(None, None, None, i, len(layout))) for i in sites}
    conn.send(len(layout))
    while (server_round := conn.recv()) is not None:
        results = []
        for i, trainer in trainers.items():
            wall, _, result = time_call(
                lambda t=trainer: t.train_round(
                    arrays,
                    None,
                    server_round=server_round,
                    local_epochs=int(fed.local_epochs),
                    half_precision=False,
                )
            )
            results.append(
                (i, result.metrics["examples-seen"], result.metrics["train-seconds"], wall)
            )
        conn.send(results)
    conn.close()


class DirectSites:
    """Every site of the federation config trained by `SiteTrainer.train_round` with no
    Flower: `workers` processes side by side (sites dealt round-robin, as Ray's actors take
    them), each with `threads` intra-op threads, on the arrays the server sends in round 1."""

    def __init__(self, ctx: BenchContext, workers: int, threads: int):
        import multiprocessing

        experiment, overrides = federation_overrides(ctx)
        num_sites = self.count(ctx)
        self.workers, self.threads, self.num_sites = workers, threads, num_sites
        self.rounds_done = 0
        spawn = multiprocessing.get_context("spawn")  # no fork of a threaded torch process
        self._conns, self._procs = [], []
        for k in range(workers):
            parent, child = spawn.Pipe()
            proc = spawn.Process(
                target=_direct_worker,
                args=(
                    child,
                    experiment,
                    list(overrides),
                    list(range(k, num_sites, workers)),
                    threads,
                ),
                daemon=True,
            )
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)
        for conn in self._conns:
            conn.recv()  # the worker built its sites

    @staticmethod
    def count(ctx: BenchContext) -> int:
        """Sites of the federation config's partition."""
        from ppa.data.partition import site_layout
        from ppa.data.protocols import protocol_of

        experiment, overrides = federation_overrides(ctx)
        cfg = load_config([f"experiment={experiment}", *overrides])
        fed = cfg.federation
        return len(
            site_layout(
                str(fed.partition),
                protocol=protocol_of(cfg.dataset),
                sites_per_modality=int(fed.sites_per_modality),
            )
        )

    def train_round(self) -> dict[str, Any]:
        """One round over every site: per-sample seconds of the sites' training loops, and the
        round's wall time (the slowest worker)."""
        self.rounds_done += 1
        for conn in self._conns:
            conn.send(self.rounds_done)
        per_worker = [conn.recv() for conn in self._conns]
        examples = sum(r[1] for w in per_worker for r in w)
        seconds = sum(r[2] for w in per_worker for r in w)
        round_wall = max(sum(r[3] for r in w) for w in per_worker)
        return {
            "round": self.rounds_done,
            "workers": self.workers,
            "threads": self.threads,
            "examples": examples,
            "train_seconds_per_sample": seconds / examples,
            "round_wall_s": round_wall,
            "round_s_per_sample": round_wall / examples,
            "load": load_average(),
        }

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()

    def __enter__(self) -> DirectSites:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bench_federation_overhead(ctx: BenchContext) -> dict[str, Any]:
    """Per-site seconds per trained sample inside the simulation (the ClientApp's own
    train-seconds / examples-seen, clean rounds) vs `SiteTrainer.train_round` called directly
    on the same sites, as many side by side as Ray runs at once, with the threads a Ray actor
    gets; plus the round-level view and the cost of running sites side by side at all."""
    settings = ctx.bench.federation_overhead
    target = float(settings.target)
    experiment, overrides = federation_overrides(ctx)
    cfg = load_config([f"experiment={experiment}", *overrides])
    # A Ray actor of num_cpus CPUs runs torch with that many threads (Ray sets
    # OMP_NUM_THREADS); the direct calls get the same, so only the runtime differs.
    threads = int(cfg.federation.resources.num_cpus)
    warmups = max(0, int(settings.direct_rounds) - 1)
    alone = None
    if settings.get("direct_alone", False):
        with DirectSites(ctx, workers=1, threads=threads) as one:
            for _ in range(warmups):
                one.train_round()
            alone = one.train_round()
    num_sites = DirectSites.count(ctx)
    concurrency = concurrent_sites(cfg, num_sites)
    with DirectSites(ctx, workers=concurrency, threads=threads) as side:
        # Warm-up rounds (first-call allocations, kernel caches), then one round before and
        # one after the simulation: a change of the machine's load shows as their difference.
        warmup = [side.train_round() for _ in range(warmups)]
        before = side.train_round()
        run = fp32_simulation(ctx)
        after = side.train_round()
    simulated = simulated_per_sample(run, concurrency)
    direct_train = statistics.mean(
        [before["train_seconds_per_sample"], after["train_seconds_per_sample"]]
    )
    direct_round = statistics.mean([before["round_s_per_sample"], after["round_s_per_sample"]])
    overhead = ratio(simulated["in_app_s_per_sample_per_actor"], direct_train)
    round_overhead = ratio(simulated["round_s_per_sample"], direct_round)
    result: dict[str, Any] = {
        "simulation": {
            **simulated,
            "sites": num_sites,
            "concurrent_sites": concurrency,
            "ray_processes": run.ray_processes,
            "wall_s": run.wall_s,
            "log": str(run.log),
        },
        "threads_per_site": threads,
        "direct_warmup": warmup,
        "direct_before": before,
        "direct_after": after,
        "direct_alone": alone,
        "direct_train_s_per_sample": direct_train,
        "direct_round_s_per_sample": direct_round,
        "overhead": overhead,
        "round_overhead": round_overhead,
        "load": load_average(),
    }
    side_note = ""
    if alone is not None:
        result["side_by_side_slowdown"] = ratio(direct_train, alone["train_seconds_per_sample"])
        side_note = (
            f"; {concurrency} sites side by side vs one alone (no Flower): "
            f"{result['side_by_side_slowdown']:.2f}x"
        )
    result["rows"] = [
        row(
            "federation overhead, per-site s/sample in a simulation round / direct",
            overhead,
            unit="x",
            target=f"<= {target}",
            met=overhead <= target,
            note=(
                f"{num_sites} sites, {concurrency} at once in both, {threads} thread(s) each; "
                f"{1e3 * simulated['in_app_s_per_sample_per_actor']:.1f} vs "
                f"{1e3 * direct_train:.1f} ms/sample (direct before/after the simulation "
                f"{1e3 * before['train_seconds_per_sample']:.1f}/"
                f"{1e3 * after['train_seconds_per_sample']:.1f}){side_note}"
            ),
        ),
        row(
            "round-level: round wall s/sample, simulation / direct",
            round_overhead,
            unit="x",
            note=(
                f"outside the sites' training loops: "
                f"{100 * simulated['outside_training_share']:.0f} % of a "
                f"{statistics.median(simulated['round_seconds']):.1f} s round (messages, model "
                "load/pack, aggregation, checkpoint, waiting for the slowest site)"
            ),
        ),
    ]
    return result


# ---------------------------------------------------------------------------------------------
# 4. upload_ratio
# ---------------------------------------------------------------------------------------------
def full_model_bytes(cfg: DictConfig) -> int:
    """Bytes of the whole global model in fp32: every travelling entry, both stems."""
    from ppa.data.protocols import load_label_space

    model = create_model(cfg.model, len(load_label_space(cfg.dataset)))
    state = model.state_dict()
    return sum(state[k].numel() * 4 for k in global_keys(state) if state[k].is_floating_point())


def upload_per_site(run: SimulationRun) -> float:
    """Median over rounds of bytes received / sites replied."""
    per_round = [r["bytes_received"] / len(r["replied"]) for r in run.rounds if r.get("replied")]
    return statistics.median(per_round)


def central_numbers(run: SimulationRun) -> dict[str, Any]:
    """The last central evaluation: mAP per privacy protocol and the standard error over the
    test trials of the headline group (the gallery-sampling noise)."""
    last = [r for r in run.rounds if r.get("central")][-1]
    report = _read_json(run.output_dir / "evaluation" / f"round_{last['round']:04d}.json")
    out: dict[str, Any] = {"round": last["round"]}
    for protocol, numbers in last["central"].items():
        entry = {"mAP": numbers["mAP"], "rank1": numbers["rank1"]}
        groups = report.get("results", {}).get(protocol, {})
        if groups:
            trials = next(iter(groups.values()))["trials"]
            maps = [t["mAP"] for t in trials]
            if len(maps) > 1:
                entry["mAP_standard_error"] = statistics.stdev(maps) / math.sqrt(len(maps))
        out[protocol] = entry
    return out


def bench_upload_ratio(ctx: BenchContext) -> dict[str, Any]:
    settings = ctx.bench.upload_ratio
    target = float(settings.target)
    fp32 = fp32_simulation(ctx)
    experiment, overrides = federation_overrides(ctx)
    half = run_simulation(
        ctx,
        "federation-fp16",
        experiment,
        [*overrides, *settings.overrides],
        timeout=float(ctx.bench.federation_overhead.timeout),
        sample_interval=float(ctx.bench.federation_overhead.sample_interval),
    )
    half.check()
    cfg = load_config([f"experiment={experiment}", *overrides])
    model_bytes = full_model_bytes(cfg)
    bytes32, bytes16 = upload_per_site(fp32), upload_per_site(half)
    map32, map16 = central_numbers(fp32), central_numbers(half)
    # Run-to-run noise: the fp32 run again with other seeds (the fp16 transport is one more
    # perturbation of the training trajectory; it must not cost more than a reseed does).
    reseeded = []
    for seed in settings.noise_seeds:
        again = run_simulation(
            ctx,
            f"federation-fp32-seed{int(seed)}",
            experiment,
            [*overrides, f"seed={int(seed)}"],
            timeout=float(ctx.bench.federation_overhead.timeout),
            sample_interval=float(ctx.bench.federation_overhead.sample_interval),
        )
        again.check()
        reseeded.append({"seed": int(seed), "central": central_numbers(again)})
    r32, r16 = bytes32 / model_bytes, bytes16 / model_bytes
    result: dict[str, Any] = {
        "full_model_fp32_bytes": model_bytes,
        "fp32": {"bytes_per_site_round": bytes32, "ratio": r32, "central": map32},
        "half_precision": {"bytes_per_site_round": bytes16, "ratio": r16, "central": map16},
        "fp32_reseeded": reseeded,
        "load": load_average(),
        "rows": [],
    }
    result["rows"].append(
        row(
            "upload per site-round / full fp32 model, half precision",
            r16,
            target=f"<= {target}",
            met=r16 <= target,
            note=(
                f"{bytes16 / 1e6:.2f} MB vs {model_bytes / 1e6:.2f} MB; fp32 transport "
                f"{r32:.3f} ({bytes32 / 1e6:.2f} MB: one stem, shared parts, prototypes)"
            ),
        )
    )
    for protocol in [p for p in map32 if p != "round"]:
        a, b = map32[protocol], map16.get(protocol, {})
        if "mAP" not in b:
            continue
        delta = b["mAP"] - a["mAP"]
        seed_deltas = [
            abs(r["central"][protocol]["mAP"] - a["mAP"])
            for r in reseeded
            if protocol in r["central"]
        ]
        noise = max(seed_deltas) if seed_deltas else None
        met = None if noise is None else delta >= -max(noise, a.get("mAP_standard_error", 0.0))
        noise_text = (
            f"a reseeded fp32 run differs by {100 * noise:.2f} pt"
            if noise is not None
            else "no reseeded run"
        )
        result["rows"].append(
            row(
                f"central mAP, half precision - fp32 ({protocol})",
                100 * delta,
                unit="pt",
                target="no loss beyond noise",
                met=met,
                note=(
                    f"fp32 {100 * a['mAP']:.2f} %, fp16 {100 * b['mAP']:.2f} % after round "
                    f"{map32['round']}; {noise_text}"
                    + (
                        f"; standard error over the test trials "
                        f"{100 * a['mAP_standard_error']:.2f} pt"
                        if "mAP_standard_error" in a
                        else ""
                    )
                ),
            )
        )
    return result


# ---------------------------------------------------------------------------------------------
# 5. sites_scaling
# ---------------------------------------------------------------------------------------------
def bench_sites_scaling(ctx: BenchContext) -> dict[str, Any]:
    settings = ctx.bench.sites_scaling
    params = dataset_params(ctx.bench.dataset, settings.dataset)
    root = synthetic_root(ctx, params)
    runs = []
    for per_modality in settings.sites_per_modality:
        sites = 2 * int(per_modality)
        overrides = [
            f"dataset.root={root}",
            f"federation.rounds={int(settings.rounds)}",
            f"federation.sites_per_modality={int(per_modality)}",
            *settings.overrides,
        ]
        run = run_simulation(
            ctx,
            f"sites-{sites}",
            "demo",
            overrides,
            timeout=float(settings.timeout),
            sample_interval=float(settings.sample_interval),
        )
        cfg = load_config(["experiment=demo", *overrides])
        entry: dict[str, Any] = {
            "sites": sites,
            "concurrent_sites": concurrent_sites(cfg, sites),
            "ray_processes": run.ray_processes,
            "exit": run.returncode,
            "status": run.summary.get("status"),
            "wall_s": run.wall_s,
            "round_seconds": {str(r["round"]): r.get("seconds") for r in run.rounds},
            "peak_rss_mib": run.peak_rss / 2**20,
            "peak_pss_mib": run.peak_pss / 2**20,
            "peak_processes": run.peak_processes,
            "peak_rss_mib_by_process": {
                k: round(v / 2**20, 1) for k, v in run.peak_rss_by_name.items()
            },
            "actor_peak_rss_mib": run.peak_rss_by_name.get(ACTOR_PROCESS, 0) / 2**20,
            "memory_series": run.memory_series[:: max(1, len(run.memory_series) // 200)],
            "log": str(run.log),
            "load": load_average(),
        }
        runs.append(entry)
        if run.returncode != 0:
            logger.warning(
                "sites_scaling: %d sites ended with exit %d (%s); see %s",
                sites,
                run.returncode,
                entry["status"],
                run.log,
            )
    ok = [r for r in runs if r["exit"] == 0]
    rows = []
    for r in runs:
        rounds = r["round_seconds"]
        steady = rounds.get(str(int(settings.rounds)))
        rows.append(
            row(
                f"{r['sites']} sites: peak memory of the process tree",
                r["peak_pss_mib"],
                unit="MiB PSS",
                note=(
                    f"RSS sum {r['peak_rss_mib']:.0f} MiB, of which the site actors "
                    f"{r['actor_peak_rss_mib']:.0f} MiB "
                    f"({r['ray_processes'].get(ACTOR_PROCESS, 0)} actors); round 1 "
                    f"{rounds.get('1') or 0:.1f} s"
                    + (f", round {settings.rounds} {steady:.1f} s" if steady else "")
                    + f"; {r['status']}"
                ),
            )
        )
    growth = None
    if len(ok) >= 2:
        first, last = ok[0], ok[-1]
        growth = ratio(last["peak_pss_mib"], first["peak_pss_mib"])
        rows.append(
            row(
                f"peak memory {last['sites']} / {first['sites']} sites",
                growth,
                unit="x",
                target="~1 (grows with concurrent sites, not total)",
                met=growth <= 1.5,
                note=f"{last['sites'] / first['sites']:.0f}x the sites, same concurrency",
            )
        )
    return {"runs": runs, "memory_growth": growth, "rows": rows}


# ---------------------------------------------------------------------------------------------
# Driver: run, record, render
# ---------------------------------------------------------------------------------------------
RUNNERS: dict[str, Callable[[BenchContext], dict[str, Any]]] = {
    "ppa_step_ratio": bench_ppa_step_ratio,
    "federation_overhead": bench_federation_overhead,
    "eval_speedup": bench_eval_speedup,
    "upload_ratio": bench_upload_ratio,
    "sites_scaling": bench_sites_scaling,
    "throughput": bench_throughput,
}


def parse_only(value: str | None) -> list[str]:
    """`--only a,b` -> the named benchmarks in the canonical order (all when empty)."""
    if not value:
        return list(BENCHMARKS)
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    return [n for n in BENCHMARKS if n in names]


def run_benchmarks(
    ctx: BenchContext,
    names: Iterable[str],
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the named benchmarks; a failing one is recorded with its error, the rest go on.
    `on_result(name, entry)` is called after each (the driver saves as it goes)."""
    results: dict[str, Any] = {}
    names = list(names)
    for name in tqdm(names, desc="benchmarks"):
        logger.info("=== %s (load %s)", name, load_average())
        started = time.perf_counter()
        entry: dict[str, Any] = {
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "quick": ctx.quick,
            "load_before": load_average(),
        }
        try:
            entry.update(RUNNERS[name](ctx))
        except Exception as err:  # a benchmark's failure is a result too
            logger.exception("%s failed", name)
            entry["error"] = f"{type(err).__name__}: {err}"
            entry["rows"] = [row(name, None, note=f"failed: {entry['error']}")]
        entry["seconds"] = time.perf_counter() - started
        entry["load_after"] = load_average()
        results[name] = entry
        logger.info("=== %s done in %.0f s", name, entry["seconds"])
        if on_result is not None:
            on_result(name, entry)
    return results


def merge_results(
    path: Path, machine: dict[str, Any], command: str, results: Mapping[str, Any]
) -> dict[str, Any]:
    """bench.json: earlier entries kept, this run's replace theirs; each entry keeps the
    machine and command it was measured with."""
    data = _read_json(path) or {"benchmarks": {}}
    for name, entry in results.items():
        data["benchmarks"][name] = {**entry, "machine": machine, "command": command}
    data["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    ordered = {n: data["benchmarks"][n] for n in BENCHMARKS if n in data["benchmarks"]}
    data["benchmarks"] = ordered
    return data


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def render_markdown(data: Mapping[str, Any]) -> str:
    """The results table (targets vs measured) and the machine(s) and commands behind it."""
    lines = [
        "| benchmark | metric | target | measured | met | notes |",
        "|---|---|---|---|---|---|",
    ]
    machines: dict[str, dict[str, Any]] = {}
    for name, entry in data.get("benchmarks", {}).items():
        for r in entry.get("rows", []):
            met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
            measured = _fmt(r.get("measured")) + (f" {r['unit']}" if r.get("unit") else "")
            lines.append(
                f"| {name} | {r['metric']} | {r.get('target', '')} | {measured} | {met} | "
                f"{r.get('note', '')} |"
            )
        machine = entry.get("machine", {})
        key = json.dumps(
            {k: machine.get(k) for k in ("cpu", "logical_cpus", "gpu", "git")}, sort_keys=True
        )
        when = entry.get("started", "?")
        load = entry.get("load_before", {})
        note = (
            f"{name}: {when}, {entry.get('seconds', 0):.0f} s, load "
            f"{load.get('1min', '?')} (1 min) before"
            + (", quick sizes" if entry.get("quick") else "")
        )
        machines.setdefault(key, {"machine": machine, "runs": [], "commands": set()})
        machines[key]["runs"].append(note)
        machines[key]["commands"].add(entry.get("command", ""))
    lines.append("")
    for group in machines.values():
        m = group["machine"]
        lines.append(
            f"Machine: {m.get('cpu')}, {m.get('logical_cpus')} logical CPUs "
            f"({m.get('usable_cpus')} usable), {m.get('memory_gib')} GiB, torch "
            f"{m.get('torch')} with {m.get('torch_threads')} threads, GPU: "
            f"{m.get('gpu') or 'none'}; flwr {m.get('flwr')}; commit {m.get('git')}."
        )
        lines.append("")
        lines.append("Commands: " + "; ".join(f"`{c}`" for c in sorted(group["commands"])))
        lines.append("")
        lines.extend(f"- {note}" for note in group["runs"])
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def update_docs(path: Path, table: str) -> None:
    """Replace the section between the bench markers (appended when the file lacks them)."""
    section = f"{DOCS_BEGIN}\n{table}{DOCS_END}\n"
    text = path.read_text() if path.is_file() else "# Benchmarks\n\n"
    if DOCS_BEGIN in text and DOCS_END in text:
        head, rest = text.split(DOCS_BEGIN, 1)
        tail = rest.split(DOCS_END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes (configs/bench/default.yaml `quick:`), ~3 minutes",
    )
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. bench.eval_speedup.repeats=9",
    )
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        names = parse_only(args.only)
    except ValueError as err:
        logger.error("%s", err)
        return 2
    cfg = load_bench_config(args.overrides, quick=args.quick)
    ctx = BenchContext(
        cfg=cfg,
        quick=args.quick,
        output_dir=anchored(cfg.bench.output_dir),
        work_dir=anchored(cfg.bench.work_dir),
    )
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    logger.info("machine: %s", machine)
    command = " ".join(["python scripts/bench.py", *(argv if argv is not None else sys.argv[1:])])
    json_path = ctx.output_dir / "bench.json"

    def save(name: str, entry: dict[str, Any]) -> dict[str, Any]:
        # After every benchmark: an interrupted run keeps what it measured.
        data = merge_results(json_path, machine, command, {name: entry})
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, json_path)
        return data

    results = run_benchmarks(ctx, names, on_result=save)
    data = _read_json(json_path)
    table = render_markdown(data)
    (ctx.output_dir / "bench.md").write_text(table)
    if not args.no_docs:
        update_docs(anchored(cfg.bench.docs), table)
    print(table)
    logger.info("results: %s", json_path)
    return 1 if any("error" in results[n] for n in results) else 0


if __name__ == "__main__":
    sys.exit(main())
