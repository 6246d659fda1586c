"""``ppa-simulate``: run the PPA Flower app on Flower's simulation runtime (Ray), on this
machine.

Starts a SuperLink of its own in simulation mode (a free loopback port; its FLWR_HOME and
database in the run's output folder), submits the app with ``flwr run`` with one simulated
SuperNode per site of the configured partition and the per-site resources of
``federation.resources``, streams the run's log to the terminal, and stops every process it
started, by PID, also on error, timeout, Ctrl-C or SIGTERM. ``simulation.json`` in the run's
output folder (``cfg.output_dir``) records the run id, its final status and the wall time::

    ppa-simulate                        # what `make demo` runs
    ppa-simulate federation.rounds=5 ppa=kpr
    ppa-simulate --resume federation.rounds=8

Everything after the options is a Hydra override, passed to the app in the run-config key
``overrides``. Exit status: 0 when the run completed, 1 when it failed, 2 on a usage or
configuration error, 124 on timeout, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ppa.config import load_config
from ppa.launch.command_line import (
    EXIT_USAGE,
    add_run_arguments,
    checked,
    configure_logging,
    supervise,
)
from ppa.launch.flower_config import build_run_config
from ppa.launch.settings import LaunchSettings, RunResult
from ppa.launch.simulation import (
    LAUNCH_SUBDIR,
    SUMMARY_NAME,
    Simulation,
    SimulationPlan,
    plan_simulation,
)
from ppa.run_dir import claim_run_dir

LOGGER = logging.getLogger("ppa.simulation")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the PPA Flower app as a simulation (Flower + Ray) on this machine, "
        "with a SuperLink of its own, then stop everything.",
    )
    add_run_arguments(parser, default_timeout=3600.0)
    parser.add_argument(
        "--num-supernodes",
        type=int,
        help="simulated sites (default: the sites of federation.partition; must match them)",
    )
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    overrides = list(args.overrides)
    workdir = args.workdir.resolve()

    def prepare() -> tuple[dict[str, Any], SimulationPlan]:
        build_run_config(args.experiment, overrides, args.resume)  # validates the overrides
        cfg = load_config([f"experiment={args.experiment}", *overrides])
        plan = plan_simulation(cfg, workdir, args.num_supernodes)  # validates first
        # The run's own folder (ppa/run_dir.py), handed to the apps so all write there.
        out = claim_run_dir(cfg, resume=args.resume, workdir=workdir)
        run_config = build_run_config(
            args.experiment, [*overrides, f"output_dir={out}"], args.resume
        )
        return run_config, replace(plan, output_dir=out)

    prepared = checked(prepare)
    if prepared is None:
        return EXIT_USAGE
    run_config, plan = prepared

    LOGGER.info(
        "simulation of %d site(s) (%s), %d CPU / %g GPU each, on %s; results in %s",
        plan.num_supernodes,
        ", ".join(f"{name} {modality}" for name, modality in plan.sites),
        plan.num_cpus,
        plan.num_gpus,
        f"the Ray cluster at {plan.ray_address}" if plan.ray_address else "a Ray of its own",
        plan.output_dir,
    )
    simulation = Simulation(
        LaunchSettings(
            output_dir=plan.output_dir / LAUNCH_SUBDIR,
            app_dir=args.app,
            workdir=workdir,
            startup_timeout=args.startup_timeout,
            extra_env=plan.environment(),
        )
    )
    summary: dict[str, Any] = {
        "experiment": args.experiment,
        "run_config": run_config,
        "sites": [{"site": name, "modality": modality} for name, modality in plan.sites],
        "federation_config": plan.federation_config(),
        "ray_address": plan.ray_address,
        "output_dir": str(plan.output_dir),
        "launch_dir": str(simulation.out),
    }

    def start_and_run() -> RunResult:
        simulation.start_superlink()
        summary["superlink"] = simulation.address
        return simulation.simulate(run_config, plan, args.timeout)

    return supervise(simulation, start_and_run, summary, plan.output_dir / SUMMARY_NAME)


if __name__ == "__main__":
    sys.exit(main())
