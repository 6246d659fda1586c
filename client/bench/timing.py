"""Timing: wall-clock and CPU-time samples of repeated calls, interleaved round-robin so load
changes hit every candidate alike, the device synchronised around each call."""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

logger = logging.getLogger("bench")


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
