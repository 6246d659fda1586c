"""Flower's simulation runtime (Ray) on this machine, with a SuperLink of our own.

`plan_simulation` turns a composed config into what one simulation runs (one simulated
SuperNode per site of the configured partition, the per-site resources of
``federation.resources``); `Simulation` is a SuperLink in simulation mode that runs it.

Why not plain ``flwr run .``: its ``:local:`` connection starts a detached SuperLink on fixed
ports that outlives the run, that nobody stops, and that another project's run would share.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ppa.data.partition import site_layout
from ppa.data.protocols import protocol_of
from ppa.launch.flower_config import anchored, format_config_args
from ppa.launch.processes import ManagedProcess
from ppa.launch.session import SuperLinkSession
from ppa.launch.settings import RunResult

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
            f"ppa-make-synthetic dataset={cfg.dataset.name}, or point dataset.root at "
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
