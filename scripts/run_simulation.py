#!/usr/bin/env python
"""Run the PPA Flower app on Flower's simulation runtime (Ray), on this machine.

Starts a SuperLink of its own in simulation mode (a free loopback port; its FLWR_HOME and
database in the run's output folder), submits the app with ``flwr run`` with one simulated
SuperNode per site of the configured partition and the per-site resources of
``federation.resources``, streams the run's log to the terminal, and stops every process it
started, by PID, also on error, timeout, Ctrl-C or SIGTERM. ``simulation.json`` in the run's
output folder (``cfg.output_dir``) records the run id, its final status and the wall time::

    .venv/bin/python scripts/run_simulation.py                        # what `make demo` runs
    .venv/bin/python scripts/run_simulation.py federation.rounds=5 ppa=kpr
    .venv/bin/python scripts/run_simulation.py --resume federation.rounds=8

Everything after the options is a Hydra override, passed to the app in the run-config key
``overrides``. Exit status: 0 when the run completed, 1 when it failed, 2 on a usage or
configuration error, 124 on timeout, 130 when interrupted.

Why not plain ``flwr run .``: its ``:local:`` connection starts a detached SuperLink on fixed
ports that outlives the run, that nobody stops, and that another project's run would share.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from ppa.config import load_config
from ppa.data.partition import site_layout
from ppa.data.protocols import protocol_of
from ppa.run_dir import claim_run_dir

from flower_launch import (
    EXIT_USAGE,
    LaunchSettings,
    ManagedProcess,
    RunResult,
    SuperLinkSession,
    add_run_arguments,
    anchored,
    build_run_config,
    checked,
    configure_logging,
    format_config_args,
    supervise,
)

LOGGER = logging.getLogger("ppa.simulation")

CONNECTION = "ppa-simulation"  # name of the SuperLink connection in $FLWR_HOME/config.toml
LAUNCH_SUBDIR = "flower"  # <output_dir>/flower: logs, Flower homes, the SuperLink database
SUMMARY_NAME = "simulation.json"


@dataclass(frozen=True)
class SimulationPlan:
    """What one simulation runs: its sites (one simulated SuperNode each) and resources."""

    sites: tuple[tuple[str, str], ...]  # (name, modality) in partition-id order
    num_cpus: int  # per site (Ray actor)
    num_gpus: float  # per site; fractions share a GPU between sites
    output_dir: Path  # cfg.output_dir, resolved as the apps resolve it
    data_root: Path
    ray_address: str | None = None  # federation.ray_address: an existing Ray cluster's head

    def environment(self) -> dict[str, str]:
        """Environment of the SuperLink and, through it, of Flower's simulation process, whose
        `ray.init()` joins the cluster that RAY_ADDRESS names instead of starting one."""
        return {"RAY_ADDRESS": self.ray_address} if self.ray_address else {}

    @property
    def num_supernodes(self) -> int:
        return len(self.sites)

    def federation_config(self) -> dict[str, int | float]:
        """The `flwr run --federation-config` keys of this plan."""
        return {
            "num-supernodes": self.num_supernodes,
            "client-resources-num-cpus": self.num_cpus,
            "client-resources-num-gpus": self.num_gpus,
        }


def plan_simulation(cfg: Any, workdir: Path, num_supernodes: int | None = None) -> SimulationPlan:
    """The plan of a composed config: sites from `federation.partition` (no data read),
    resources from `federation.resources`, paths anchored at `workdir`.

    `num_supernodes`, when given, must match the partition: the ClientApp maps partition id
    i to the i-th site and refuses a simulation of another size (client/site.py).
    """
    fed = cfg.federation
    layout = site_layout(
        str(fed.partition),
        protocol=protocol_of(cfg.dataset),
        sites_per_modality=int(fed.sites_per_modality),
    )
    if num_supernodes is not None and num_supernodes != len(layout):
        names = ", ".join(name for name, _ in layout)
        raise ValueError(
            f"--num-supernodes {num_supernodes} does not match federation.partition="
            f"{fed.partition}, which makes {len(layout)} site(s) ({names}); every simulated "
            "SuperNode is one site: change the partition (e.g. federation.sites_per_modality) "
            "or leave --num-supernodes out"
        )
    num_cpus, num_gpus = fed.resources.num_cpus, fed.resources.num_gpus
    if float(num_cpus) != int(num_cpus) or int(num_cpus) < 1:
        raise ValueError(
            f"federation.resources.num_cpus={num_cpus}: Flower reserves whole CPUs per site "
            "(an integer >= 1)"
        )
    if float(num_gpus) < 0:
        raise ValueError(f"federation.resources.num_gpus={num_gpus} must be >= 0")
    data_root = anchored(str(cfg.dataset.root), workdir)
    if not data_root.is_dir():
        raise FileNotFoundError(
            f"dataset.root does not exist: {data_root} (write the synthetic set with "
            f"scripts/make_synthetic.py dataset={cfg.dataset.name}, or point dataset.root at "
            "the data)"
        )
    return SimulationPlan(
        sites=tuple((name, modality.value) for name, modality in layout),
        num_cpus=int(num_cpus),
        num_gpus=float(num_gpus),
        output_dir=anchored(str(cfg.output_dir), workdir).resolve(),
        data_root=data_root,
        ray_address=str(fed.ray_address) if fed.get("ray_address") else None,
    )


class Simulation(SuperLinkSession):
    """A SuperLink in simulation mode: its SuperExec runs each run's ServerApp and simulated
    ClientApps (Ray) as subprocesses, all stopped with it."""

    connection: ClassVar[str] = CONNECTION

    def superlink_args(self) -> list[str]:
        return ["--insecure", "--simulation", "--isolation", "subprocess"]

    def start_superlink(self) -> ManagedProcess:
        """A fresh SuperLink per launch: a previous launch's database (finished runs) is
        dropped so run ids and logs belong to this launch alone."""
        for stale in self.state_db.parent.glob(f"{self.state_db.name}*"):
            stale.unlink()
        return super().start_superlink()

    def simulate(
        self, run_config: dict[str, Any], plan: SimulationPlan, timeout: float
    ) -> RunResult:
        """Run the app once on `plan`'s simulated federation, its log echoed to stdout."""
        federation = format_config_args(plan.federation_config(), "--federation-config")
        return self.run(
            run_config,
            timeout,
            flwr_args=("--federation-config", federation),
            echo=sys.stdout,
        )


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
