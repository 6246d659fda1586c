"""The deployment engine on this machine: a real SuperLink and one SuperNode per site on
loopback (free ports chosen at run time), optionally with TLS and SuperNode authentication.
Logs of every process go to the output folder. See docs/deployment.md.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ppa.cpu_threads import thread_env
from ppa.launch.flower_config import format_config_args
from ppa.launch.processes import LOOPBACK, LaunchError, ManagedProcess, free_port, tail_text
from ppa.launch.session import SuperLinkSession
from ppa.launch.settings import PROJECT_ROOT, LaunchSettings
from ppa.node_config import SiteSpec

LOGGER = logging.getLogger("ppa.deployment")

MAKE_CERTS = PROJECT_ROOT / "scripts" / "make_certs.sh"
CONNECTION = "ppa-deployment"  # name of the SuperLink connection in $FLWR_HOME/config.toml
# Seconds: make_certs.sh; polling period of the wait for SuperNodes.
CERTS_TIMEOUT_S = 120.0
NODES_POLL_S = 0.5
# The deployment's errors are the shared tooling's: a SuperLink that fails to start raises
# the same type whichever launcher started it.
DeploymentError = LaunchError


@dataclass
class DeploymentSettings(LaunchSettings):
    """Where and how the deployment runs."""

    tls: bool = False
    auth: bool = False
    certs_dir: Path | None = None  # default: <output_dir>/certs, created with make_certs.sh
    site_threads: int | None = None  # torch/BLAS threads per SuperNode (None: torch's default)
    # In memory unless asked (ppa-deploy --state-file): with six sites pushing their replies at
    # once, flwr's SQLite state refuses some pushes ("database is locked") and the replies are
    # lost. The file is what lets a SuperLink restarted under live SuperNodes know them.
    persistent_state: bool = False

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
    with `persistent_state` ``superlink/state.db``, which survives a SuperLink restart:
    registrations, runs), one log per SuperNode, and ``certs/``.
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
            format_config_args(site.node_config()),
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
