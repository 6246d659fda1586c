"""7. ``amp_speedup``: one site's training step in float32 against the same step under bf16
autocast (``train.amp``), on the same batch, model and optimiser, one-thread CPU time; plus how
far the bf16 step's loss is from the float32 one on the same weights."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Any

import torch
from omegaconf import DictConfig

from client.bench.context import BenchContext, load_average
from client.bench.report import row
from client.bench.timing import interleaved, ratio, torch_threads
from client.bench.workloads import (
    build_model,
    model_config,
    step_context,
    synthetic_batch,
    train_step,
)
from ppa.anonymize import KprAnonymizer
from ppa.data.loader import Batch
from ppa.device import DeviceSettings, bf16_autocast
from ppa.training.optim import create_optimizer
from ppa.training.step import StepContext, ppa_step

logger = logging.getLogger("bench")


def bench_amp_speedup(ctx: BenchContext) -> dict[str, Any]:
    settings = ctx.bench.amp_speedup
    target = float(settings.target)
    cases, rows = [], []
    for case in settings.cases:
        result = _amp_case(ctx, case, list(settings.overrides))
        cases.append(result)
        name = f"{case.model} {case.height}x{case.width} b{result['batch']}"
        native = result["native_bf16"]
        # Where the hardware has no bf16 kernels autocast emulates them: the ratio is still
        # recorded, but the target only applies where `train.amp=native` would switch it on.
        rows.append(
            row(
                f"site step float32 / bf16 autocast, {name}",
                result["speedup"],
                unit="x",
                target=f">= {target}" if native else "",
                met=(result["speedup"] >= target) if native else None,
                note=(
                    f"one-thread CPU time, median of {case.repeats}; "
                    f"{1e3 * result['median_s']['float32']:.1f} vs "
                    f"{1e3 * result['median_s']['bfloat16']:.1f} ms per step; "
                    f"{'native' if native else 'emulated (no oneDNN bf16 kernels)'} bf16 on "
                    f"{result['device']}; loss on the same weights "
                    f"{result['loss']['float32']:.4f} vs {result['loss']['bfloat16']:.4f} "
                    f"({100 * result['loss']['relative_difference']:.2f} %)"
                ),
            )
        )
    return {"cases": cases, "rows": rows}


def _amp_case(ctx: BenchContext, case: DictConfig, overrides: list[str]) -> dict[str, Any]:
    height, width = int(case.height), int(case.width)
    cfg = model_config(str(case.model), height, width, *overrides)
    device = DeviceSettings.from_config(cfg)
    num_classes = 2 * int(case.ids)
    both = synthetic_batch(int(case.ids), int(case.instances), height, width, int(ctx.bench.seed))
    # A site holds one camera, so its batches hold one modality: the first half.
    batch = both.rows(0, int(case.ids) * int(case.instances)).to(device.device)
    anonymizer = KprAnonymizer.from_config(cfg).to(device.device)
    settings = {
        "float32": dataclasses.replace(device, amp_dtype=None),
        "bfloat16": dataclasses.replace(device, amp_dtype=torch.bfloat16),
    }
    model = build_model(cfg, num_classes, device)
    model.train()
    contexts = {
        name: step_context(cfg, model, dev, anonymizer, str(case.ppa), num_classes)
        for name, dev in settings.items()
    }
    losses = _losses_on_the_same_weights(model, contexts, batch)
    optimizer = create_optimizer(model, cfg.train.optimizer)
    steps = {name: (lambda c=c: train_step(c, batch, optimizer)) for name, c in contexts.items()}
    label = f"{case.model} {height}x{width} b{len(batch)}"
    logger.info("amp_speedup: %s, %d interleaved repeats", label, int(case.repeats))
    with torch_threads(1):
        timed = interleaved(
            steps,
            int(case.repeats),
            warmup=int(case.warmup),
            desc=f"amp {label}",
            cpu_clock=time.thread_time,
        )
    median = {name: samples.median_cpu for name, samples in timed.items()}
    return {
        "model": str(case.model),
        "input": [height, width],
        "batch": len(batch),
        "ppa": str(case.ppa),
        "device": str(device.device),
        "native_bf16": bf16_autocast("native", device.device),
        "clock": "thread_time",
        "samples": {name: samples.summary() for name, samples in timed.items()},
        "median_s": median,
        "speedup": ratio(median["float32"], median["bfloat16"]),
        "loss": losses,
        "load": load_average(),
    }


def _losses_on_the_same_weights(
    model: torch.nn.Module, contexts: dict[str, StepContext], batch: Batch
) -> dict[str, float]:
    """Each precision's loss on one copy of the starting weights (a forward in training mode
    updates BatchNorm running statistics, so each gets its own copy)."""
    out = {}
    for name, context in contexts.items():
        replica = copy.deepcopy(model)
        with torch.no_grad():
            loss, _ = ppa_step(dataclasses.replace(context, model=replica), batch)
        out[name] = float(loss)
    out["relative_difference"] = abs(out["bfloat16"] - out["float32"]) / abs(out["float32"])
    return out
