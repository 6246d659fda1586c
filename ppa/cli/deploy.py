"""``ppa-deploy``: run the PPA Flower app on the deployment engine, on this machine.

Starts a real SuperLink and one SuperNode per site on loopback (free ports chosen at run
time), optionally with TLS and SuperNode authentication, submits the app with ``flwr run``,
follows the run until it finishes or the timeout expires, and stops every process it
started, by PID, also on error, timeout or Ctrl-C. Logs of every process go to the output
folder, with a ``deployment.json`` summary. See docs/deployment.md.

Sites come from the Hydra config (``federation.partition`` of ``dataset``: SYSU-MM01
``cam1``..``cam6``, RegDB ``visible``/``thermal``, ...) or from ``--site`` options::

    ppa-deploy --rounds 2 model=tiny
    ppa-deploy --tls --auth --site cam1:visible --site cam3:infrared \\
        federation.min_available_sites=2

Everything after the options is a Hydra override, passed to the app in the run-config key
``overrides`` (the same as ``flwr run --run-config 'overrides="..."'``).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ppa.config import load_config
from ppa.cpu_threads import threads_per_site
from ppa.data.protocols import protocol_of
from ppa.launch.command_line import (
    EXIT_USAGE,
    add_run_arguments,
    checked,
    configure_logging,
    supervise,
)
from ppa.launch.deployment import Deployment, DeploymentSettings
from ppa.launch.flower_config import anchored, build_run_config
from ppa.launch.settings import RunResult
from ppa.launch.sites import parse_site, sites_from_config
from ppa.node_config import SiteSpec

LOGGER = logging.getLogger("ppa.deployment")


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
        "--state-file",
        action="store_true",
        help="keep the SuperLink's state in <output-dir>/superlink/state.db, so that a "
        "SuperLink restarted under running SuperNodes knows them (default: in memory; flwr's "
        "SQLite state loses replies when several sites push at once)",
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
                    "(write the synthetic set with ppa-make-synthetic, or point "
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
        persistent_state=args.state_file,
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
        "state_file": settings.persistent_state,
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
