#!/usr/bin/env python
"""Run the PPA Flower app on the deployment engine, on this machine.

Starts a real SuperLink and one SuperNode per site on loopback (free ports chosen at run
time), optionally with TLS and SuperNode authentication, submits the app with ``flwr run``,
follows the run until it finishes or the timeout expires, and stops every process it
started, by PID, also on error, timeout or Ctrl-C. Logs of every process go to the output
folder, with a ``deployment.json`` summary. See docs/deployment.md.

Sites come from the Hydra config (``federation.partition`` of ``dataset``: SYSU-MM01
``cam1``..``cam6``, RegDB ``visible``/``thermal``, ...) or from ``--site`` options::

    .venv/bin/python scripts/run_deployment.py --rounds 2 model=tiny
    .venv/bin/python scripts/run_deployment.py --tls --auth \\
        --site cam1:visible --site cam3:infrared federation.min_available_sites=2

Everything after the options is a Hydra override, passed to the app in the run-config key
``overrides`` (the same as ``flwr run --run-config 'overrides="..."'``).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ppa.config import load_config
from ppa.cpu_threads import thread_env, threads_per_site
from ppa.data import partition
from ppa.data.protocols import protocol_of
from ppa.data.records import Modality

from flower_launch import (
    CONFIG_FORBIDDEN_CHARS,
    EXIT_USAGE,
    LOOPBACK,
    PROJECT_ROOT,
    LaunchError,
    LaunchSettings,
    ManagedProcess,
    RunResult,
    SuperLinkSession,
    add_run_arguments,
    anchored,
    build_run_config,
    checked,
    configure_logging,
    free_port,
    supervise,
    tail_text,
)
from flower_launch import format_config_args as format_node_config

LOGGER = logging.getLogger("ppa.deployment")

MAKE_CERTS = PROJECT_ROOT / "scripts" / "make_certs.sh"
CONNECTION = "ppa-deployment"  # name of the SuperLink connection in $FLWR_HOME/config.toml
# Seconds: make_certs.sh; polling period of the wait for SuperNodes.
CERTS_TIMEOUT_S = 120.0
NODES_POLL_S = 0.5
# The deployment's errors are the shared tooling's: a SuperLink that fails to start raises
# the same type whichever launcher started it.
DeploymentError = LaunchError

# --------------------------------------------------------------------------- sites


@dataclass(frozen=True)
class SiteSpec:
    """One site = one SuperNode, and the node-config its ClientApp reads."""

    name: str
    modality: str  # "visible" | "infrared" (ppa.data.records.Modality values)
    data_root: Path  # absolute
    dataset: str  # "sysu" | "regdb" (cfg.dataset.protocol)

    def node_config(self) -> dict[str, str]:
        """The node-config keys of the app contract (docs/deployment.md)."""
        return {
            "site": self.name,
            "modality": self.modality,
            "data-root": str(self.data_root),
            "dataset": self.dataset,
        }


def parse_site(spec: str, *, dataset: str, default_root: Path, workdir: Path) -> SiteSpec:
    """Parse ``NAME:MODALITY[:DATA_ROOT]``; a relative DATA_ROOT is anchored at `workdir`."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"--site {spec!r}: expected NAME:MODALITY[:DATA_ROOT]")
    name, modality = parts[0], parts[1]
    if any(c.isspace() for c in name) or any(c in name for c in CONFIG_FORBIDDEN_CHARS):
        raise ValueError(f"--site {spec!r}: site name {name!r} must not contain spaces/quotes")
    try:
        parsed = Modality.parse(modality)
    except ValueError as exc:
        raise ValueError(f"--site {spec!r}: {exc}") from exc
    root = Path(parts[2]) if len(parts) == 3 and parts[2] else default_root
    return SiteSpec(name, parsed.value, anchored(root, workdir), dataset)


def site_layout(protocol: str, strategy: str, sites_per_modality: int = 2) -> list[tuple[str, str]]:
    """(site name, modality) pairs of a partition, as ppa.data.partition names them."""
    layout = partition.site_layout(
        strategy, protocol=protocol, sites_per_modality=sites_per_modality
    )
    return [(name, modality.value) for name, modality in layout]


def sites_from_config(cfg: Any, workdir: Path) -> list[SiteSpec]:
    """One SiteSpec per site of the configured partition, all reading `cfg.dataset.root`."""
    protocol = protocol_of(cfg.dataset)
    layout = site_layout(
        protocol, str(cfg.federation.partition), int(cfg.federation.sites_per_modality)
    )
    root = anchored(cfg.dataset.root, workdir)
    return [SiteSpec(name, modality, root, protocol) for name, modality in layout]


# --------------------------------------------------------------------------- deployment


@dataclass
class DeploymentSettings(LaunchSettings):
    """Where and how the deployment runs."""

    tls: bool = False
    auth: bool = False
    certs_dir: Path | None = None  # default: <output_dir>/certs, created with make_certs.sh
    site_threads: int | None = None  # torch/BLAS threads per SuperNode (None: torch's default)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.auth and not self.tls:
            raise ValueError(
                "SuperNode authentication needs TLS (Flower refuses "
                "--enable-supernode-auth with --insecure): set tls as well"
            )
        self.certs_dir = Path(self.certs_dir or self.output_dir / "certs").resolve()

    @property
    def certs(self) -> Path:
        """The credentials folder (make_certs.sh layout)."""
        return Path(self.certs_dir or self.output_dir / "certs")


class Deployment(SuperLinkSession):
    """A SuperLink and SuperNodes on this machine; a context manager that stops them all.

    Layout under `output_dir`: that of SuperLinkSession (``logs/``, ``flwr-home/<process>/``,
    ``superlink/state.db``, which survives a SuperLink restart: registrations, runs), one log
    per SuperNode, and ``certs/``.
    """

    connection: ClassVar[str] = CONNECTION
    settings: DeploymentSettings

    def __init__(self, settings: DeploymentSettings) -> None:
        super().__init__(settings)
        self.supernodes: dict[str, ManagedProcess] = {}
        self.node_ids: dict[str, int] = {}  # site -> node id (registered, auth only)

    def __enter__(self) -> Deployment:
        return self

    def close(self) -> None:
        """Stop every process this deployment started: followers, SuperNodes, SuperLink."""
        self.stop_followers()
        for process in self.supernodes.values():
            process.stop(self.settings.stop_grace)
        self.stop_superlink()

    def ca_file(self) -> Path | None:
        return self.settings.certs / "ca.crt" if self.settings.tls else None

    # ---- credentials

    def ensure_credentials(self, node_names: Sequence[str] = ()) -> Path:
        """CA, SuperLink certificate and SuperNode key pairs (scripts/make_certs.sh)."""
        certs = self.settings.certs
        argv = ["bash", str(MAKE_CERTS), "-o", str(certs), *node_names]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
            timeout=CERTS_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise DeploymentError(
                f"{MAKE_CERTS.name} failed (exit {done.returncode}):\n"
                f"{tail_text(done.stdout + done.stderr)}"
            )
        for line in done.stdout.splitlines():
            LOGGER.info("%s", line)
        return certs

    def supernode_key(self, site: str) -> Path:
        return self.settings.certs / "supernodes" / site

    # ---- SuperLink

    def start_superlink(self) -> ManagedProcess:
        """Start the SuperLink (with TLS: credentials first) and wait until it answers."""
        if self.settings.tls:
            self.ensure_credentials()
        return super().start_superlink()

    def superlink_args(self) -> list[str]:
        if not self.settings.tls:
            return ["--insecure"]
        certs = self.settings.certs
        args = [
            "--ssl-ca-certfile",
            str(certs / "ca.crt"),
            "--ssl-certfile",
            str(certs / "server.crt"),
            "--ssl-keyfile",
            str(certs / "server.key"),
        ]
        if self.settings.auth:
            args.append("--enable-supernode-auth")
        return args

    # ---- SuperNodes

    def register_supernode(self, site: str) -> int:
        """Register the site's public key with the SuperLink (`flwr supernode register`)."""
        if not self.settings.auth:
            raise DeploymentError("registration only applies with SuperNode authentication")
        key = self.supernode_key(site)
        if not key.with_suffix(".pub").exists():
            self.ensure_credentials([site])
        answer = self.flwr_json(
            "supernode", "register", str(key.with_suffix(".pub")), CONNECTION, "--name", site
        )
        node_id = int(answer["node-id"])
        self.node_ids[site] = node_id
        LOGGER.info("registered SuperNode %s as node %d", site, node_id)
        return node_id

    def start_supernode(self, site: SiteSpec, *, register: bool = True) -> ManagedProcess:
        """Start the SuperNode of `site`; with auth, register its key first unless told not.

        ``register=False`` starts a node whose key the SuperLink does not know: Flower refuses
        it (the refusal is what docs/deployment.md's authentication test shows).
        """
        current = self.supernodes.get(site.name)
        if current is not None and current.running():
            raise DeploymentError(f"the SuperNode of site {site.name!r} is already running")
        argv = [
            self._executable("flower-supernode"),
            "--superlink",
            self.address,
            "--host",
            LOOPBACK,
            "--port",
            str(free_port(LOOPBACK)),
            "--node-config",
            format_node_config(site.node_config()),
        ]
        if self.settings.tls:
            argv += ["--root-certificates", str(self.settings.certs / "ca.crt")]
        else:
            argv.append("--insecure")
        if self.settings.auth:
            key = self.supernode_key(site.name)
            if not key.exists():
                self.ensure_credentials([site.name])
            if register and site.name not in self.node_ids:
                self.register_supernode(site.name)
            argv += ["--auth-supernode-private-key", str(key)]
        env = self.env(f"supernode-{site.name}")
        if self.settings.site_threads is not None:  # sites on one host share its cores
            env.update(thread_env(self.settings.site_threads))
        process = ManagedProcess(
            f"supernode-{site.name}", argv, self.logs / f"supernode-{site.name}.log", env
        ).start()
        self.supernodes[site.name] = process
        return process

    def stop_supernode(self, site: str, *, kill: bool = False) -> None:
        """Stop one site's SuperNode (SIGKILL with `kill`: a crash, no goodbye)."""
        if site not in self.supernodes:
            raise KeyError(f"no SuperNode was started for site {site!r}")
        self.supernodes[site].stop(self.settings.stop_grace, kill=kill)

    def list_nodes(self) -> list[dict[str, Any]]:
        """The SuperLink's node table (`flwr supernode list --format json`)."""
        return list(self.flwr_json("supernode", "list", CONNECTION)["nodes"])

    def wait_for_nodes(self, sites: Sequence[str], timeout: float | None = None) -> None:
        """Wait until the SuperNodes of `sites` are online; fail early if one exits.

        With authentication the registered node ids must be online; without, as many nodes
        as sites (the SuperLink may still count a crashed node online for up to ~60 s).
        """
        timeout = self.settings.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        online: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            for site in sites:
                process = self.supernodes[site]
                if not process.running():
                    raise DeploymentError(
                        f"SuperNode of site {site!r} exited with {process.returncode}; "
                        f"log {process.log_path}:\n{tail_text(process.log_text())}"
                    )
            online = [n for n in self.list_nodes() if n.get("status") == "online"]
            online_ids = {int(n["node-id"]) for n in online}
            if self.settings.auth:
                ready = all(self.node_ids.get(s) in online_ids for s in sites)
            else:
                ready = len(online_ids) >= len(sites)
            if ready:
                LOGGER.info("%d SuperNode(s) online", len(online_ids))
                return
            time.sleep(NODES_POLL_S)
        raise DeploymentError(
            f"{len(online)} of {len(sites)} SuperNodes online after "
            f"{timeout} s; logs in {self.logs}"
        )


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the PPA Flower app on a SuperLink + one SuperNode per site on this "
        "machine (loopback), then stop everything.",
    )
    add_run_arguments(parser, default_timeout=3600.0)
    parser.add_argument("--rounds", type=int, help="federation.rounds (adds an override)")
    parser.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="NAME:MODALITY[:ROOT]",
        help="a site (repeatable); default: the sites of federation.partition; "
        "ROOT defaults to dataset.root",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every connection (self-signed CA from make_certs.sh)",
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="SuperNode authentication (implies --tls): every site's key is "
        "registered with `flwr supernode register` before it starts",
    )
    parser.add_argument(
        "--certs-dir",
        type=Path,
        help="credentials folder (default <output-dir>/certs, created if missing)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="logs, Flower homes, state (default outputs/deployment/<experiment>-<time>)",
    )
    parser.add_argument(
        "--site-threads",
        type=int,
        help="torch/BLAS threads per SuperNode (default: this machine's cores / sites, at "
        "least 1; 0: torch's default, every site sizes its pool by all cores)",
    )
    parser.add_argument(
        "--no-data-check",
        action="store_true",
        help="do not require each site's data root to exist here",
    )
    return parser.parse_intermixed_args(argv)


def resolve_sites(args: argparse.Namespace, overrides: Sequence[str]) -> list[SiteSpec]:
    """Sites from --site options, else from the composed Hydra config."""
    cfg = load_config([f"experiment={args.experiment}", *overrides])
    workdir = args.workdir.resolve()
    if not args.site:
        sites = sites_from_config(cfg, workdir)
    else:
        sites = [
            parse_site(
                spec,
                dataset=protocol_of(cfg.dataset),
                default_root=anchored(cfg.dataset.root, workdir),
                workdir=workdir,
            )
            for spec in args.site
        ]
    names = [s.name for s in sites]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"site names must be unique, repeated: {', '.join(duplicates)}")
    if not args.no_data_check:
        for site in sites:
            if not site.data_root.is_dir():
                raise FileNotFoundError(
                    f"data root of site {site.name!r} does not exist: {site.data_root} "
                    "(write the synthetic set with scripts/make_synthetic.py, or point "
                    "dataset.root / --site NAME:MODALITY:ROOT at the data)"
                )
    return sites


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    overrides = list(args.overrides)
    if args.rounds is not None:
        if args.rounds < 1:
            LOGGER.error("--rounds must be >= 1, got %d", args.rounds)
            return EXIT_USAGE
        overrides.append(f"federation.rounds={args.rounds}")
    prepared = checked(
        lambda: (
            build_run_config(args.experiment, overrides, args.resume),
            resolve_sites(args, overrides),
        )
    )
    if prepared is None:
        return EXIT_USAGE
    run_config, sites = prepared

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output_dir = (
        args.output_dir or args.workdir / "outputs" / "deployment" / f"{args.experiment}-{stamp}"
    )
    settings = DeploymentSettings(
        output_dir=output_dir,
        app_dir=args.app,
        workdir=args.workdir,
        tls=args.tls or args.auth,
        auth=args.auth,
        certs_dir=args.certs_dir,
        startup_timeout=args.startup_timeout,
        site_threads=(
            threads_per_site(len(sites)) if args.site_threads is None else args.site_threads or None
        ),
    )
    if args.auth and not args.tls:
        LOGGER.info("--auth: enabling TLS as well (Flower requires it)")

    summary: dict[str, Any] = {
        "sites": [s.node_config() for s in sites],
        "run_config": run_config,
        "tls": settings.tls,
        "auth": settings.auth,
        "site_threads": settings.site_threads,
        "output_dir": str(settings.output_dir),
    }
    deployment = Deployment(settings)

    def start_and_run() -> RunResult:
        deployment.start_superlink()
        summary["superlink"] = deployment.address
        for site in sites:
            deployment.start_supernode(site)
        deployment.wait_for_nodes([s.name for s in sites])
        summary["node_ids"] = deployment.node_ids
        return deployment.run(run_config, timeout=args.timeout)

    return supervise(deployment, start_and_run, summary, settings.output_dir / "deployment.json")


if __name__ == "__main__":
    sys.exit(main())
