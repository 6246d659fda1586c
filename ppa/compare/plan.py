"""Which trainings a comparison runs: one federated and one centralised per budget and seed.

Both sides get the same run overrides, the same seed, the same number of epochs (a site's
epoch is a pass over its own images; `rounds x local_epochs` of them) and the same learning-rate
step, `train.lr_steps` (a recipe's `federation.lr_step_fractions` moves the federation's, at
a fraction of every budget: the demo's 7/8); each writes into its own folder under the
comparison's output folder.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig


class ComparisonConfigError(ValueError):
    """A comparison setting that cannot be run as asked."""


@dataclass(frozen=True)
class Job:
    side: str  # federated | centralised
    budget: int
    seed: int
    output_dir: Path
    command: tuple[str, ...]
    eval_epochs: tuple[int, ...]  # epochs at which the run is evaluated

    @property
    def name(self) -> str:
        short = "fed" if self.side == "federated" else "central"
        return f"{short}_e{self.budget}_s{self.seed}"


def lr_step(budget: int, fraction: float) -> int:
    step = round(budget * fraction)
    if not 0 < step <= budget:
        raise ComparisonConfigError(
            f"compare.lr_step_fraction={fraction} puts the step of a {budget}-epoch run at {step}"
        )
    return step


def eval_epochs(budget: int, every: int, granularity: int) -> tuple[int, ...]:
    """Multiples of `every` up to the budget, plus the budget, on the `granularity` grid."""
    if every < 1:
        raise ComparisonConfigError(f"compare.eval_every_epochs must be >= 1, got {every}")
    if every % granularity:
        raise ComparisonConfigError(
            f"compare.eval_every_epochs={every} is not a multiple of federation.local_epochs="
            f"{granularity}"
        )
    return tuple(sorted({*range(every, budget + 1, every), budget}))


def plan_jobs(
    cfg: DictConfig,
    overrides: Sequence[str],
    out_dir: Path,
    *,
    python: str = sys.executable,
    scripts: Path = Path("scripts"),
) -> list[Job]:
    """Jobs for every budget and seed of `cfg.compare` (`cfg` composed with `overrides`)."""
    cmp = cfg.compare
    local = int(cfg.federation.local_epochs)
    experiment = str(cmp.experiment)
    jobs = []
    for budget in (int(b) for b in cmp.epochs):
        if budget % local:
            raise ComparisonConfigError(
                f"compare.epochs has {budget}, not a multiple of federation.local_epochs={local}"
            )
        step = lr_step(budget, float(cmp.lr_step_fraction))
        points = eval_epochs(budget, int(cmp.eval_every_epochs), local)
        for seed in (int(s) for s in cmp.seeds):
            # The plan's keys come last: Hydra keeps the last value of a key.
            common = [*overrides, f"train.lr_steps=[{step}]", f"seed={seed}"]
            fed_dir = out_dir / f"fed_e{budget}_s{seed}"
            fed = (
                python,
                str(scripts / "run_simulation.py"),
                "--experiment",
                experiment,
                *common,
                f"federation.rounds={budget // local}",
                f"federation.evaluate_every={int(cmp.eval_every_epochs) // local}",
                "federation.evaluate_initial=false",
                f"federation.eval_protocols=[{','.join(cmp.protocols)}]",
                f"output_dir={fed_dir}",
            )
            jobs.append(Job("federated", budget, seed, fed_dir, fed, points))
            central_dir = out_dir / f"central_e{budget}_s{seed}"
            central = (
                python,
                str(scripts / "train_central.py"),
                f"experiment={experiment}",
                *common,
                f"train.epochs={budget}",
                f"train.checkpoint_every={int(cmp.eval_every_epochs)}",
                f"output_dir={central_dir}",
            )
            jobs.append(Job("centralised", budget, seed, central_dir, central, points))
    return jobs
