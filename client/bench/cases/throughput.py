"""6. ``throughput``: training and feature-extraction images/s, FLOPs per image (forward, and a
whole training step) from torch's FlopCounterMode, achieved FLOP/s against one large matmul on
the same device (the attainable peak)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

from client.bench.context import BenchContext, load_average
from client.bench.report import row
from client.bench.timing import interleaved, ratio, synchronize, time_call
from client.bench.workloads import (
    build_model,
    model_config,
    step_context,
    synthetic_batch,
    train_step,
)
from ppa.anonymize import KprAnonymizer
from ppa.device import DeviceSettings
from ppa.eval.features import extract_features
from ppa.training.loop import train_one_epoch
from ppa.training.optim import create_optimizer

logger = logging.getLogger("bench")


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
