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
import contextlib
import ctypes
import datetime
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from ppa.config import load_config
from ppa.data import partition
from ppa.data.protocols import protocol_of
from ppa.data.records import Modality

LOGGER = logging.getLogger("ppa.deployment")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAKE_CERTS = PROJECT_ROOT / "scripts" / "make_certs.sh"
DEFAULT_EXPERIMENT = "demo"  # the pyproject's [tool.flwr.app.config] default
CONNECTION = "ppa-deployment"  # name of the SuperLink connection in $FLWR_HOME/config.toml
LOOPBACK = "127.0.0.1"
# Environment every process of the deployment gets. Flower must not `uv sync` the app's
# dependencies at run time (it would fetch a CUDA torch, and fails offline), must not phone
# home with usage telemetry (sites run this), and must not look for Flower updates online.
FLOWER_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "PYTHONUNBUFFERED": "1",
}
# Run status strings of `flwr ls --format json` (flwr.common.constant.Status/SubStatus).
STATUS_COMPLETED = "finished:completed"
STATUS_FINISHED_PREFIX = "finished"
# Seconds: one `flwr` CLI call; `flwr run` (builds and uploads the app bundle); make_certs.sh;
# the log follower's last words after the run ended. Polling periods of the wait loops.
CLI_TIMEOUT_S = 60.0
SUBMIT_TIMEOUT_S = 300.0
CERTS_TIMEOUT_S = 120.0
FOLLOWER_DRAIN_S = 10.0
HEALTH_POLL_S = 0.2
NODES_POLL_S = 0.5
RUN_POLL_S = 2.0
# Exit codes of the command line.
EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 124, 130
# prctl(2) option: signal delivered to the child when its parent dies.
_PR_SET_PDEATHSIG = 1
# Characters the node-config parser of flwr cannot carry inside a quoted value.
_NODE_CONFIG_FORBIDDEN = ('"', "'", "\n")


class DeploymentError(RuntimeError):
    """A process of the deployment failed to start, died, or a Flower command failed."""


class RunTimeoutError(DeploymentError):
    """The run did not finish within the timeout."""


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


def format_node_config(values: Mapping[str, str | int | float | bool]) -> str:
    """Render `values` as flower-supernode's ``--node-config`` string: ``k="v" k2=3``."""
    parts = []
    for key, value in values.items():
        if not key or any(c.isspace() or c == "=" for c in key):
            raise ValueError(f"node-config key {key!r} must be non-empty, without '=' or spaces")
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, (int, float)):
            rendered = repr(value)
        else:
            text = str(value)
            bad = [c for c in _NODE_CONFIG_FORBIDDEN if c in text]
            if bad:
                raise ValueError(
                    f"node-config value of {key!r} contains {bad[0]!r}, which flwr's "
                    f"--node-config parser cannot carry: {text!r}"
                )
            rendered = json.dumps(text)
        parts.append(f"{key}={rendered}")
    return " ".join(parts)


def parse_site(spec: str, *, dataset: str, default_root: Path, workdir: Path) -> SiteSpec:
    """Parse ``NAME:MODALITY[:DATA_ROOT]``; a relative DATA_ROOT is anchored at `workdir`."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"--site {spec!r}: expected NAME:MODALITY[:DATA_ROOT]")
    name, modality = parts[0], parts[1]
    if any(c.isspace() for c in name) or any(c in name for c in _NODE_CONFIG_FORBIDDEN):
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


def anchored(path: str | os.PathLike, workdir: Path) -> Path:
    """`path` with ``~`` expanded; a relative path is anchored at `workdir`, as the apps
    anchor it at PPA_WORKDIR (ppa.config.resolve_path)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else workdir / p


def sites_from_config(cfg: Any, workdir: Path) -> list[SiteSpec]:
    """One SiteSpec per site of the configured partition, all reading `cfg.dataset.root`."""
    protocol = protocol_of(cfg.dataset)
    layout = site_layout(
        protocol, str(cfg.federation.partition), int(cfg.federation.sites_per_modality)
    )
    root = anchored(cfg.dataset.root, workdir)
    return [SiteSpec(name, modality, root, protocol) for name, modality in layout]


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a live process from /proc, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of `root` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is None or stat[0] == "Z":
            continue
        children.setdefault(stat[1], []).append(int(entry.name))
        starts[int(entry.name)] = stat[2]
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found[child] = starts[child]
                stack.append(child)
    return found


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it if the launcher dies without cleaning up
    (SIGKILL, crash), so no SuperLink/SuperNode outlives it. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _alive(pid: int, start_time: int) -> bool:
    """True while `pid` is the same (non-zombie) process that started at `start_time`."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == start_time


class ManagedProcess:
    """A child process in its own process group, logging to a file, stopped by PID.

    Flower's processes start their own helpers (SuperExec, ServerApp, ClientApp), some in new
    sessions; `stop` therefore signals the child's group and every descendant found in /proc,
    and never anything else.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.env = dict(env)
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start the process; stdout and stderr go to `log_path` (appended)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        LOGGER.info("started %s (pid %d), log %s", self.name, self._popen.pid, self.log_path)
        return self

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise DeploymentError(f"{self.name} was never started")
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once it exited, else None."""
        return None if self._popen is None else self._popen.poll()

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit status (raises subprocess.TimeoutExpired)."""
        if self._popen is None:
            raise DeploymentError(f"{self.name} was never started")
        return self._popen.wait(timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, grace: float, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL with `kill`) the process tree; SIGKILL what outlives `grace`."""
        if self._popen is None:
            return
        first = signal.SIGKILL if kill else signal.SIGTERM
        tree = _descendants(self._popen.pid)
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, first)
        for pid, start in tree.items():
            if _alive(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, first)
        deadline = time.monotonic() + grace
        try:
            self._popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            LOGGER.warning(
                "%s (pid %d) ignored SIGTERM for %.0f s: killing it",
                self.name,
                self._popen.pid,
                grace,
            )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signal.SIGKILL)
            self._popen.wait()
        # Helpers in other sessions exit when their parent is gone; give them the same grace.
        while any(_alive(p, s) for p, s in tree.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid, start in tree.items():
            if _alive(pid, start):
                LOGGER.warning("killing leftover helper pid %d of %s", pid, self.name)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        LOGGER.info(
            "stopped %s (pid %d, exit %s)", self.name, self._popen.pid, self._popen.returncode
        )


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def health_ok(host: str, port: int, ca_file: Path | None, timeout: float = 1.0) -> bool:
    """True when ``GET /health`` of a Flower HTTP API answers 200 (over TLS with `ca_file`).

    A plain TCP connect is not enough: another program may hold the port.
    """
    scheme = "https" if ca_file is not None else "http"
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None
    try:
        with urllib.request.urlopen(
            f"{scheme}://{host}:{port}/health", timeout=timeout, context=context
        ) as answer:
            return int(answer.status) == HTTPStatus.OK
    except (OSError, ValueError):  # refused, reset, timed out, TLS failure, bad answer
        return False


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _toml_string(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes (json.dumps never emits '\/').
    return json.dumps(value)


def write_flat_toml(path: Path, values: Mapping[str, str | bool | int | float]) -> Path:
    """Write a flat TOML table (the `flwr run --run-config FILE.toml` format)."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, (int, float)):
            rendered = repr(value)
        else:
            rendered = _toml_string(str(value))
        lines.append(f"{key} = {rendered}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- deployment


@dataclass
class DeploymentSettings:
    """Where and how the deployment runs."""

    output_dir: Path
    app_dir: Path = PROJECT_ROOT
    workdir: Path = PROJECT_ROOT  # exported to the apps as PPA_WORKDIR
    host: str = LOOPBACK
    tls: bool = False
    auth: bool = False
    certs_dir: Path | None = None  # default: <output_dir>/certs, created with make_certs.sh
    startup_timeout: float = 90.0
    stop_grace: float = 15.0
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir).resolve()
        self.app_dir = Path(self.app_dir).resolve()
        self.workdir = Path(self.workdir).resolve()
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


@dataclass
class RunResult:
    """Outcome of one `flwr run` on the deployment."""

    run_id: int
    status: str
    elapsed: float
    log_path: Path
    details: dict[str, Any]

    @property
    def completed(self) -> bool:
        return self.status == STATUS_COMPLETED


class Deployment:
    """A SuperLink and SuperNodes on this machine; a context manager that stops them all.

    Layout under `output_dir`: ``logs/`` (one log per process, ``flwr-cli.log`` for the
    Flower CLI calls, ``run-<id>.log`` for the ServerApp's log), ``flwr-home/<process>/``
    (each process its own FLWR_HOME; ``flwr-home/cli/config.toml`` holds the connection),
    ``superlink/state.db`` (survives a SuperLink restart: registrations, runs), ``certs/``.
    """

    def __init__(self, settings: DeploymentSettings) -> None:
        self.settings = settings
        self.out = settings.output_dir
        self.logs = self.out / "logs"
        self.port: int | None = None
        self.superlink: ManagedProcess | None = None
        self.supernodes: dict[str, ManagedProcess] = {}
        self.node_ids: dict[str, int] = {}  # site -> node id (registered, auth only)
        self._followers: list[ManagedProcess] = []
        self._bin = Path(sys.executable).parent

    # ---- context management

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process this deployment started: followers, SuperNodes, SuperLink."""
        grace = self.settings.stop_grace
        for follower in self._followers:
            follower.stop(grace)
        self._followers.clear()
        for process in self.supernodes.values():
            process.stop(grace)
        if self.superlink is not None:
            self.superlink.stop(grace)

    # ---- environment and CLI

    @property
    def address(self) -> str:
        if self.port is None:
            raise DeploymentError("the SuperLink has not been started")
        return f"{self.settings.host}:{self.port}"

    def _executable(self, name: str) -> str:
        local = self._bin / name
        if local.exists():
            return str(local)
        found = shutil.which(name)
        if found is None:
            raise DeploymentError(
                f"{name!r} not found next to {sys.executable} nor on PATH; "
                "is flwr installed in this environment?"
            )
        return found

    def env(self, flwr_home: str) -> dict[str, str]:
        """Environment of a deployment process with its own FLWR_HOME."""
        env = dict(os.environ)
        env.update(FLOWER_ENV)
        env.update(self.settings.extra_env)
        # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by
        # name: this interpreter's bin folder goes first on PATH.
        env["PATH"] = os.pathsep.join([str(self._bin), env.get("PATH", "")])
        env["FLWR_HOME"] = str(self.out / "flwr-home" / flwr_home)
        env["PPA_WORKDIR"] = str(self.settings.workdir)
        (self.out / "flwr-home" / flwr_home).mkdir(parents=True, exist_ok=True)
        return env

    def flwr(
        self,
        *args: str,
        timeout: float = CLI_TIMEOUT_S,
        check: bool = True,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run one `flwr` CLI command against this deployment's connection."""
        argv = [self._executable("flwr"), *args]
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.env("cli"),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"`flwr {' '.join(args)}` did not answer in {timeout} s") from exc
        with (self.logs / "flwr-cli.log").open("a") as log:
            log.write(
                f"$ flwr {' '.join(args)}\n{done.stdout}{done.stderr}[exit {done.returncode}]\n"
            )
        if check and done.returncode != 0:
            raise DeploymentError(
                f"`flwr {' '.join(args)}` failed (exit {done.returncode}):\n"
                f"{_tail(done.stdout + done.stderr)}"
            )
        return done

    def flwr_json(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> dict[str, Any]:
        """Run a `flwr ... --format json` command and return its JSON answer."""
        done = self.flwr(*args, "--format", "json", timeout=timeout)
        try:
            answer = json.loads(done.stdout)
        except json.JSONDecodeError as exc:
            raise DeploymentError(
                f"`flwr {' '.join(args)}` printed no JSON:\n{_tail(done.stdout + done.stderr)}"
            ) from exc
        if not answer.get("success", False):
            raise DeploymentError(f"`flwr {' '.join(args)}` reported failure: {answer}")
        return answer

    def write_connection(self) -> None:
        """The connection `flwr` uses, in $FLWR_HOME/config.toml of the CLI."""
        lines = [
            "[superlink]",
            f'default = "{CONNECTION}"',
            "",
            f"[superlink.{CONNECTION}]",
            f"address = {_toml_string(self.address)}",
        ]
        if self.settings.tls:
            ca = self.settings.certs / "ca.crt"
            lines.append(f"root-certificates = {_toml_string(str(ca))}")
        else:
            lines.append("insecure = true")
        path = self.out / "flwr-home" / "cli" / "config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")

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
                f"{_tail(done.stdout + done.stderr)}"
            )
        for line in done.stdout.splitlines():
            LOGGER.info("%s", line)
        return certs

    def supernode_key(self, site: str) -> Path:
        return self.settings.certs / "supernodes" / site

    # ---- SuperLink

    def start_superlink(self) -> ManagedProcess:
        """Start the SuperLink (all APIs on one port) and wait until it accepts connections."""
        if self.superlink is not None and self.superlink.running():
            raise DeploymentError("the SuperLink is already running")
        if self.settings.tls:
            self.ensure_credentials()
        if self.port is None:
            self.port = free_port(self.settings.host)
        state = self.out / "superlink" / "state.db"
        state.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            self._executable("flower-superlink"),
            "--host",
            self.settings.host,
            "--port",
            str(self.port),
            "--database",
            str(state),
            "--disable-runtime-dependency-installation",
            *self._superlink_tls_args(),
        ]
        self.superlink = ManagedProcess(
            "superlink", argv, self.logs / "superlink.log", self.env("superlink")
        ).start()
        self._wait_until_healthy(self.superlink)
        self.write_connection()
        return self.superlink

    def _superlink_tls_args(self) -> list[str]:
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

    def _wait_until_healthy(self, process: ManagedProcess) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout
        while time.monotonic() < deadline:
            if not process.running():
                raise DeploymentError(
                    f"{process.name} exited with {process.returncode} while starting; "
                    f"log {process.log_path}:\n{_tail(process.log_text())}"
                )
            ca = self.settings.certs / "ca.crt" if self.settings.tls else None
            if health_ok(self.settings.host, self.port, ca):  # type: ignore[arg-type]
                return
            time.sleep(HEALTH_POLL_S)
        raise DeploymentError(
            f"{process.name} did not answer on {self.address}/health within "
            f"{self.settings.startup_timeout} s; log {process.log_path}"
        )

    def stop_superlink(self, *, kill: bool = False) -> None:
        """Stop the SuperLink and the ServerApp it runs (SIGKILL with `kill`: a crash)."""
        if self.superlink is not None:
            self.superlink.stop(self.settings.stop_grace, kill=kill)

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
        process = ManagedProcess(
            f"supernode-{site.name}",
            argv,
            self.logs / f"supernode-{site.name}.log",
            self.env(f"supernode-{site.name}"),
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
                        f"log {process.log_path}:\n{_tail(process.log_text())}"
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

    # ---- runs

    def submit(self, run_config: Mapping[str, str | bool | int | float]) -> int:
        """Submit the app with `flwr run` (run-config from a TOML file); returns the run id."""
        config_file = write_flat_toml(self.out / "run-config.toml", run_config)
        answer = self.flwr_json(
            "run",
            str(self.settings.app_dir),
            CONNECTION,
            "--run-config",
            str(config_file),
            timeout=SUBMIT_TIMEOUT_S,
        )
        run_id = int(answer["run-id"])
        LOGGER.info("submitted run %d (%s)", run_id, answer.get("fab-id", "?"))
        return run_id

    def follow(self, run_id: int) -> ManagedProcess:
        """Stream the run's log (`flwr log --stream`) into logs/run-<id>.log."""
        argv = [self._executable("flwr"), "log", str(run_id), CONNECTION, "--stream"]
        follower = ManagedProcess(
            f"flwr-log-{run_id}", argv, self.logs / f"run-{run_id}.log", self.env("cli")
        ).start()
        self._followers.append(follower)
        return follower

    def run_details(self, run_id: int) -> dict[str, Any]:
        """The SuperLink's record of one run (`flwr ls --run-id`)."""
        runs = self.flwr_json("ls", CONNECTION, "--run-id", str(run_id))["runs"]
        if not runs:
            raise DeploymentError(f"the SuperLink has no run {run_id}")
        return dict(runs[0])

    def wait_for_run(self, run_id: int, timeout: float, poll: float = RUN_POLL_S) -> dict[str, Any]:
        """Poll until the run is finished; RunTimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.superlink is None or not self.superlink.running():
                raise DeploymentError(
                    f"the SuperLink exited during run {run_id}; log {self.logs / 'superlink.log'}"
                )
            details = self.run_details(run_id)
            if str(details.get("status", "")).startswith(STATUS_FINISHED_PREFIX):
                return details
            if time.monotonic() >= deadline:
                raise RunTimeoutError(
                    f"run {run_id} still {details.get('status')!r} after {timeout} s"
                )
            time.sleep(poll)

    def run(self, run_config: Mapping[str, str | bool | int | float], timeout: float) -> RunResult:
        """Submit, follow and wait for one run; stops it (`flwr stop`) on timeout."""
        started = time.monotonic()
        run_id = self.submit(run_config)
        follower = self.follow(run_id)
        try:
            details = self.wait_for_run(run_id, timeout)
        except RunTimeoutError:
            self.flwr("stop", str(run_id), CONNECTION, check=False)
            raise
        with contextlib.suppress(subprocess.TimeoutExpired):
            follower.wait(timeout=FOLLOWER_DRAIN_S)  # `flwr log --stream` ends with the run
        result = RunResult(
            run_id,
            str(details.get("status")),
            time.monotonic() - started,
            follower.log_path,
            details,
        )
        LOGGER.info("run %d %s after %.1f s", run_id, result.status, result.elapsed)
        return result


# --------------------------------------------------------------------------- command line


def build_run_config(
    experiment: str, overrides: Sequence[str], resume: bool
) -> dict[str, str | bool]:
    """The app's run-config: `experiment`, space-separated Hydra `overrides`, `resume`."""
    for override in overrides:
        if not override or any(c.isspace() for c in override):
            raise ValueError(
                f"Hydra override {override!r} is empty or contains whitespace; "
                "the run-config key `overrides` is space-separated"
            )
    return {"experiment": experiment, "overrides": " ".join(overrides), "resume": resume}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the PPA Flower app on a SuperLink + one SuperNode per site on this "
        "machine (loopback), then stop everything.",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides, passed to the app (run-config `overrides`)",
    )
    parser.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        help="configs/experiment/<name>.yaml (run-config `experiment`)",
    )
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
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint (run-config `resume`)",
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
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds the run may take before it is stopped (default 3600)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=90.0,
        help="seconds to wait for the SuperLink and SuperNodes (default 90)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="logs, Flower homes, state (default outputs/deployment/<experiment>-<time>)",
    )
    parser.add_argument(
        "--app",
        type=Path,
        default=PROJECT_ROOT,
        help="the Flower app folder (default: this project)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=PROJECT_ROOT,
        help="exported to the apps as PPA_WORKDIR (default: this project)",
    )
    parser.add_argument(
        "--no-data-check",
        action="store_true",
        help="do not require each site's data root to exist here",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    overrides = list(args.overrides)
    if args.rounds is not None:
        if args.rounds < 1:
            LOGGER.error("--rounds must be >= 1, got %d", args.rounds)
            return EXIT_USAGE
        overrides.append(f"federation.rounds={args.rounds}")
    try:
        run_config = build_run_config(args.experiment, overrides, args.resume)
        sites = resolve_sites(args, overrides)
    except (ValueError, FileNotFoundError) as exc:
        LOGGER.error("%s", exc)
        return EXIT_USAGE
    except Exception as exc:  # Hydra's composition errors name the bad key/group
        LOGGER.error("cannot compose the configuration: %s", exc)
        return EXIT_USAGE

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
    )
    if args.auth and not args.tls:
        LOGGER.info("--auth: enabling TLS as well (Flower requires it)")

    summary: dict[str, Any] = {
        "sites": [s.node_config() for s in sites],
        "run_config": run_config,
        "tls": settings.tls,
        "auth": settings.auth,
        "output_dir": str(settings.output_dir),
    }
    code = EXIT_RUN_FAILED
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, so the finally below runs.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    deployment = Deployment(settings)
    try:
        deployment.start_superlink()
        summary["superlink"] = deployment.address
        for site in sites:
            deployment.start_supernode(site)
        deployment.wait_for_nodes([s.name for s in sites])
        summary["node_ids"] = deployment.node_ids
        result = deployment.run(run_config, timeout=args.timeout)
        summary.update(
            run_id=result.run_id,
            status=result.status,
            elapsed_s=round(result.elapsed, 1),
            run_log=str(result.log_path),
            run=result.details,
        )
        code = EXIT_OK if result.completed else EXIT_RUN_FAILED
        if not result.completed:
            LOGGER.error(
                "run %d ended %s; its log: %s", result.run_id, result.status, result.log_path
            )
    except RunTimeoutError as exc:
        LOGGER.error("%s", exc)
        summary["status"] = "timeout"
        code = EXIT_TIMEOUT
    except DeploymentError as exc:
        LOGGER.error("%s", exc)
        summary["status"] = f"error: {exc}"
    except KeyboardInterrupt:
        LOGGER.error("interrupted: stopping the deployment")
        summary["status"] = "interrupted"
        code = EXIT_INTERRUPTED
    finally:
        deployment.close()
        signal.signal(signal.SIGTERM, previous)
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        summary_path = settings.output_dir / "deployment.json"
        summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        LOGGER.info("summary: %s", summary_path)
    return code


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
