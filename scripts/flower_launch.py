"""Process and Flower tooling shared by the launchers (run_simulation.py, run_deployment.py).

- `ManagedProcess`: a child in its own process group, logging to a file, stopped by PID
  together with every helper it started (found through /proc), never anything else.
- `SuperLinkSession`: a SuperLink of our own on a free loopback port, the ``flwr`` CLI pointed
  at it through a connection in a private FLWR_HOME, and the life of a run on it (submit,
  stream its log, wait for its end, stop it). The launchers subclass it: the deployment adds
  TLS, credentials and SuperNodes; the simulation adds Flower's simulation runtime.
- `supervise`: runs a launcher's work under a session and stops everything afterwards, on
  success, error, timeout, Ctrl-C or SIGTERM; as a Linux "child subreaper" the launcher also
  adopts and stops helpers that outlived their parents (Ray workers after a simulation), so
  nothing it started keeps running. Writes the launcher's JSON summary, returns its exit code.
- Small pieces both launchers need: free ports, the /health probe, flat TOML and ``k=v``
  config strings, the app's run-config, the shared command-line options (Hydra overrides and
  options may be mixed in any order).

The scripts import this file as a sibling module (``from flower_launch import ...``): Python
puts a script's folder on sys.path, and pytest adds scripts/ (pyproject `pythonpath`).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import ctypes
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar, TextIO, TypeVar

LOGGER = logging.getLogger("ppa.launch")
T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXPERIMENT = "demo"  # the pyproject's [tool.flwr.app.config] default
LOOPBACK = "127.0.0.1"
# Environment every Flower process we start gets. Flower must not `uv sync` the app's
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
# Seconds: one `flwr` CLI call; `flwr run` (builds and uploads the app bundle); the log
# follower's last words after the run ended.
CLI_TIMEOUT_S = 60.0
SUBMIT_TIMEOUT_S = 300.0
FOLLOWER_DRAIN_S = 10.0
# Polling periods (s). Each `flwr ls` costs ~0.6 s of CPU (a Python start-up): while a log
# follower runs, its end (`flwr log --stream` ends with the run) is the signal and the status
# is only re-read as a safety net; without one, every RUN_POLL_S.
HEALTH_POLL_S = 0.2
RUN_POLL_S = 2.0
FOLLOWED_STATUS_POLL_S = 15.0
ECHO_PERIOD_S = 0.5
# Exit codes of the launchers' command lines.
EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 124, 130
# prctl(2) options: signal delivered to the child when its parent dies; adopt orphaned
# descendants (they are reparented to the nearest "subreaper" ancestor instead of init).
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# Characters flwr's `k=v` config parser (--node-config, --federation-config) cannot carry
# inside a quoted value.
CONFIG_FORBIDDEN_CHARS = ('"', "'", "\n")


class LaunchError(RuntimeError):
    """A launched process failed to start or died, or a Flower command failed."""


class RunTimeoutError(LaunchError):
    """The run did not finish within the timeout."""


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


def _process_table() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, start time) of every process in /proc (empty without /proc)."""
    table: dict[int, tuple[str, int, int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return table
    for entry in proc.iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                table[int(entry.name)] = stat
    return table


def _descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of `root` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for pid, (state, ppid, start) in _process_table().items():
        if state != "Z":
            children.setdefault(ppid, []).append(pid)
            starts[pid] = start
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


def adopt_orphans() -> bool:
    """Make this process the subreaper of everything it starts (Linux; False elsewhere).

    A helper whose parent exits first (Ray's raylet and workers once `flwr-simulation` has
    returned, a ClientApp after its SuperNode) is then reparented to this process instead of
    init, so `stop_strays` still finds it. Only for a launcher's own process: a subreaper
    must reap what it adopts.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def stop_strays(grace: float) -> list[int]:
    """Stop every process still running below this one, then reap the adopted ones.

    Called after every ManagedProcess was stopped: what is left are helpers that outlived
    their parents (see `adopt_orphans`). SIGTERM, SIGKILL after `grace`. Returns their pids.
    """
    strays = _descendants(os.getpid())
    if strays:
        # Expected after a simulation: Ray's workers outlive `flwr-simulation` for a moment.
        LOGGER.info(
            "stopping %d helper(s) that outlived their parents: %s",
            len(strays),
            ", ".join(f"{pid} ({_comm(pid)})" for pid in sorted(strays)),
        )
    for pid, start in strays.items():
        if _alive(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p, s) for p, s in strays.items()) and time.monotonic() < deadline:
        _reap_children()
        time.sleep(0.1)
    for pid, start in strays.items():
        if _alive(pid, start):
            LOGGER.warning("helper pid %d ignored SIGTERM for %.0f s: killing it", pid, grace)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    time.sleep(0.1 if strays else 0.0)
    _reap_children()
    return sorted(strays)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _reap_children() -> None:
    """Collect exited children of this process that nobody waits for (adopted orphans).

    Only zombies are collected: a live child's status stays for its subprocess.Popen.
    """
    for pid, (state, ppid, _) in _process_table().items():
        if ppid == os.getpid() and state == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def _alive(pid: int, start_time: int) -> bool:
    """True while `pid` is the same (non-zombie) process that started at `start_time`."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == start_time


class ManagedProcess:
    """A child process in its own process group, logging to a file, stopped by PID.

    Flower's processes start their own helpers (SuperExec, ServerApp, ClientApp, Ray), some
    in new sessions; `stop` therefore signals the child's group and every descendant found in
    /proc, and never anything else.
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
        self.output_offset = 0  # where this start's output begins in `log_path`
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start the process; stdout and stderr go to `log_path` (appended)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self.output_offset = log.tell()
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
            raise LaunchError(f"{self.name} was never started")
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
            raise LaunchError(f"{self.name} was never started")
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


class LogEcho:
    """Copies what a process appends to its log file onto a text stream (the terminal)."""

    def __init__(self, path: Path, stream: TextIO, offset: int = 0) -> None:
        self.path = path
        self.stream = stream
        self.offset = offset
        # Incremental: a read may end inside a multi-byte UTF-8 character.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def pump(self) -> None:
        """Write out everything appended since the last call."""
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                data = log.read()
        except FileNotFoundError:
            return
        if data:
            self.offset += len(data)
            self.stream.write(self._decoder.decode(data))
            self.stream.flush()


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


def tail_text(text: str, lines: int = 15) -> str:
    """The last `lines` lines of `text` (for error messages quoting a log)."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


# --------------------------------------------------------------------------- config formats


def toml_string(value: str) -> str:
    """`value` as a TOML basic string."""
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
            rendered = toml_string(str(value))
        lines.append(f"{key} = {rendered}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def format_config_args(
    values: Mapping[str, str | int | float | bool], option: str = "--node-config"
) -> str:
    """Render `values` as a flwr ``k=v`` config string (``--node-config``,
    ``--federation-config``): ``k="v" k2=3 k3=true``."""
    parts = []
    for key, value in values.items():
        if not key or any(c.isspace() or c == "=" for c in key):
            raise ValueError(f"{option} key {key!r} must be non-empty, without '=' or spaces")
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, (int, float)):
            rendered = repr(value)
        else:
            text = str(value)
            bad = [c for c in CONFIG_FORBIDDEN_CHARS if c in text]
            if bad:
                raise ValueError(
                    f"{option} value of {key!r} contains {bad[0]!r}, which flwr's "
                    f"{option} parser cannot carry: {text!r}"
                )
            rendered = json.dumps(text)
        parts.append(f"{key}={rendered}")
    return " ".join(parts)


def build_run_config(
    experiment: str, overrides: Sequence[str], resume: bool
) -> dict[str, str | bool]:
    """The app's run-config: `experiment`, space-separated Hydra `overrides`, `resume`.

    The apps split `overrides` with shlex (ppa.config.overrides_from_run_config), so each
    override is shell-quoted here: the apps then compose exactly the overrides the launcher
    composed, quotes included (``attack='nan'`` stays the string "nan", not a float NaN).
    """
    for override in overrides:
        if not override or any(c.isspace() for c in override):
            raise ValueError(
                f"Hydra override {override!r} is empty or contains whitespace; "
                "the run-config key `overrides` is space-separated"
            )
    return {"experiment": experiment, "overrides": shlex.join(overrides), "resume": resume}


def anchored(path: str | os.PathLike, workdir: Path) -> Path:
    """`path` with ``~`` expanded; a relative path is anchored at `workdir`, as the apps
    anchor it at PPA_WORKDIR (ppa.config.resolve_path)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else workdir / p


# --------------------------------------------------------------------------- command line


def add_run_arguments(parser: argparse.ArgumentParser, *, default_timeout: float) -> None:
    """The options every launcher shares: which experiment and overrides, resume, limits,
    the app and working folders, verbosity. Parse with `parse_intermixed_args`, so overrides
    and options may come in any order."""
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
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint (run-config `resume`)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default_timeout,
        help=f"seconds the run may take before it is stopped (default {default_timeout:.0f})",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=90.0,
        help="seconds to wait for the Flower processes to come up (default 90)",
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
    parser.add_argument("-v", "--verbose", action="store_true")


def checked(step: Callable[[], T]) -> T | None:
    """`step()`: the launcher's composition of the config and checks of its inputs; or None
    after logging why they failed (the command line then exits with EXIT_USAGE)."""
    try:
        return step()
    except (ValueError, FileNotFoundError) as exc:
        LOGGER.error("%s", exc)
    except Exception as exc:  # Hydra's composition errors name the bad key/group
        LOGGER.error("cannot compose the configuration: %s", exc)
    return None


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (e.g. from a CI timeout or `kill`) unwinds like Ctrl-C, so cleanup runs."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_summary(path: Path, summary: Mapping[str, Any]) -> Path:
    """The launcher's JSON summary (what ran, how it ended, where its files are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    LOGGER.info("summary: %s", path)
    return path


# --------------------------------------------------------------------------- SuperLink


@dataclass
class LaunchSettings:
    """Where and how a launcher's Flower processes run."""

    output_dir: Path
    app_dir: Path = PROJECT_ROOT
    workdir: Path = PROJECT_ROOT  # exported to the apps as PPA_WORKDIR
    host: str = LOOPBACK
    startup_timeout: float = 90.0
    stop_grace: float = 15.0
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir).resolve()
        self.app_dir = Path(self.app_dir).resolve()
        self.workdir = Path(self.workdir).resolve()


@dataclass
class RunResult:
    """Outcome of one `flwr run`."""

    run_id: int
    status: str
    elapsed: float
    log_path: Path
    details: dict[str, Any]

    @property
    def completed(self) -> bool:
        return self.status == STATUS_COMPLETED


class SuperLinkSession:
    """A SuperLink of our own and the `flwr` CLI pointed at it; a context manager that stops
    every process it started.

    Layout under `output_dir`: ``logs/`` (one log per process, ``flwr-cli.log`` for the Flower
    CLI calls, ``run-<id>.log`` for the run's log), ``flwr-home/<process>/`` (each process its
    own FLWR_HOME; ``flwr-home/cli/config.toml`` holds the connection), ``superlink/state.db``.
    Subclasses adapt `superlink_args`, `ca_file` and `close`.
    """

    connection: ClassVar[str] = "ppa"  # name of the connection in the CLI's config.toml

    def __init__(self, settings: LaunchSettings) -> None:
        self.settings = settings
        self.out = settings.output_dir
        self.logs = self.out / "logs"
        self.port: int | None = None
        self.superlink: ManagedProcess | None = None
        self._followers: dict[int, ManagedProcess] = {}
        self._echoes: dict[int, LogEcho] = {}
        self._bin = Path(sys.executable).parent

    # ---- context management

    def __enter__(self) -> SuperLinkSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process this session started: log followers, then the SuperLink."""
        self.stop_followers()
        self.stop_superlink()

    def stop_followers(self) -> None:
        for follower in self._followers.values():
            follower.stop(self.settings.stop_grace)
        self._followers.clear()
        self._echoes.clear()

    # ---- environment and CLI

    @property
    def address(self) -> str:
        if self.port is None:
            raise LaunchError("the SuperLink has not been started")
        return f"{self.settings.host}:{self.port}"

    @property
    def state_db(self) -> Path:
        """The SuperLink's database (runs, registrations); survives a SuperLink restart."""
        return self.out / "superlink" / "state.db"

    def _executable(self, name: str) -> str:
        local = self._bin / name
        if local.exists():
            return str(local)
        found = shutil.which(name)
        if found is None:
            raise LaunchError(
                f"{name!r} not found next to {sys.executable} nor on PATH; "
                "is flwr installed in this environment?"
            )
        return found

    def env(self, flwr_home: str) -> dict[str, str]:
        """Environment of a Flower process with its own FLWR_HOME."""
        env = dict(os.environ)
        env.update(FLOWER_ENV)
        env.update(self.settings.extra_env)
        # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp,
        # flwr-simulation) by name: this interpreter's bin folder goes first on PATH.
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
        """Run one `flwr` CLI command against this session's connection."""
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
            raise LaunchError(f"`flwr {' '.join(args)}` did not answer in {timeout} s") from exc
        with (self.logs / "flwr-cli.log").open("a") as log:
            log.write(
                f"$ flwr {' '.join(args)}\n{done.stdout}{done.stderr}[exit {done.returncode}]\n"
            )
        if check and done.returncode != 0:
            raise LaunchError(
                f"`flwr {' '.join(args)}` failed (exit {done.returncode}):\n"
                f"{tail_text(done.stdout + done.stderr)}"
            )
        return done

    def flwr_json(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> dict[str, Any]:
        """Run a `flwr ... --format json` command and return its JSON answer."""
        done = self.flwr(*args, "--format", "json", timeout=timeout)
        try:
            answer = json.loads(done.stdout)
        except json.JSONDecodeError as exc:
            raise LaunchError(
                f"`flwr {' '.join(args)}` printed no JSON:\n{tail_text(done.stdout + done.stderr)}"
            ) from exc
        if not answer.get("success", False):
            raise LaunchError(f"`flwr {' '.join(args)}` reported failure: {answer}")
        return answer

    def ca_file(self) -> Path | None:
        """The CA certificate clients verify the SuperLink with; None: plain connections."""
        return None

    def write_connection(self) -> None:
        """The connection `flwr` uses, in $FLWR_HOME/config.toml of the CLI."""
        lines = [
            "[superlink]",
            f"default = {toml_string(self.connection)}",
            "",
            f"[superlink.{self.connection}]",
            f"address = {toml_string(self.address)}",
        ]
        ca = self.ca_file()
        if ca is not None:
            lines.append(f"root-certificates = {toml_string(str(ca))}")
        else:
            lines.append("insecure = true")
        path = self.out / "flwr-home" / "cli" / "config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")

    # ---- SuperLink

    def superlink_args(self) -> list[str]:
        """Security and runtime flags of `flower-superlink` (plain, deployment runtime)."""
        return ["--insecure"]

    def start_superlink(self) -> ManagedProcess:
        """Start the SuperLink (all APIs on one port) and wait until it accepts connections."""
        if self.superlink is not None and self.superlink.running():
            raise LaunchError("the SuperLink is already running")
        if self.port is None:
            self.port = free_port(self.settings.host)
        self.state_db.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            self._executable("flower-superlink"),
            "--host",
            self.settings.host,
            "--port",
            str(self.port),
            "--database",
            str(self.state_db),
            "--disable-runtime-dependency-installation",
            *self.superlink_args(),
        ]
        self.superlink = ManagedProcess(
            "superlink", argv, self.logs / "superlink.log", self.env("superlink")
        ).start()
        self._wait_until_healthy(self.superlink)
        self.write_connection()
        return self.superlink

    def _wait_until_healthy(self, process: ManagedProcess) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout
        while time.monotonic() < deadline:
            if not process.running():
                raise LaunchError(
                    f"{process.name} exited with {process.returncode} while starting; "
                    f"log {process.log_path}:\n{tail_text(process.log_text())}"
                )
            if health_ok(self.settings.host, self.port, self.ca_file()):  # type: ignore[arg-type]
                return
            time.sleep(HEALTH_POLL_S)
        raise LaunchError(
            f"{process.name} did not answer on {self.address}/health within "
            f"{self.settings.startup_timeout} s; log {process.log_path}"
        )

    def stop_superlink(self, *, kill: bool = False) -> None:
        """Stop the SuperLink and what it runs (SIGKILL with `kill`: a crash)."""
        if self.superlink is not None:
            self.superlink.stop(self.settings.stop_grace, kill=kill)

    # ---- runs

    def submit(self, run_config: Mapping[str, str | bool | int | float], *flwr_args: str) -> int:
        """Submit the app with `flwr run` (run-config from a TOML file, then `flwr_args`);
        returns the run id."""
        config_file = write_flat_toml(self.out / "run-config.toml", run_config)
        answer = self.flwr_json(
            "run",
            str(self.settings.app_dir),
            self.connection,
            "--run-config",
            str(config_file),
            *flwr_args,
            timeout=SUBMIT_TIMEOUT_S,
        )
        run_id = int(answer["run-id"])
        LOGGER.info("submitted run %d (%s)", run_id, answer.get("fab-id", "?"))
        return run_id

    def follow(self, run_id: int, echo: TextIO | None = None) -> ManagedProcess:
        """Stream the run's log (`flwr log --stream`) into logs/run-<id>.log; with `echo`,
        `wait_for_run` and `run` copy it there as it arrives."""
        argv = [self._executable("flwr"), "log", str(run_id), self.connection, "--stream"]
        follower = ManagedProcess(
            f"flwr-log-{run_id}", argv, self.logs / f"run-{run_id}.log", self.env("cli")
        ).start()
        self._followers[run_id] = follower
        if echo is not None:
            self._echoes[run_id] = LogEcho(follower.log_path, echo, follower.output_offset)
        return follower

    def run_details(self, run_id: int) -> dict[str, Any]:
        """The SuperLink's record of one run (`flwr ls --run-id`)."""
        runs = self.flwr_json("ls", self.connection, "--run-id", str(run_id))["runs"]
        if not runs:
            raise LaunchError(f"the SuperLink has no run {run_id}")
        return dict(runs[0])

    def wait_for_run(self, run_id: int, timeout: float, poll: float = RUN_POLL_S) -> dict[str, Any]:
        """Wait until the run is finished; RunTimeoutError after `timeout` seconds.

        With a log follower (`follow`), its end signals the run's end; the status is read
        then, and every FOLLOWED_STATUS_POLL_S in case the stream stalls; without one, every
        `poll` seconds.
        """
        deadline = time.monotonic() + timeout
        follower = self._followers.get(run_id)
        tail = self._echoes.get(run_id)
        following = follower is not None and follower.running()
        status_due = time.monotonic()
        while True:
            if self.superlink is None or not self.superlink.running():
                raise LaunchError(
                    f"the SuperLink exited during run {run_id}; log {self.logs / 'superlink.log'}"
                )
            now = time.monotonic()
            still_following = follower is not None and follower.running()
            if following and not still_following:
                status_due = now  # the log stream ended: the run most likely did
            following = still_following
            if now >= status_due or now >= deadline:
                details = self.run_details(run_id)
                if str(details.get("status", "")).startswith(STATUS_FINISHED_PREFIX):
                    return details
                if now >= deadline:
                    raise RunTimeoutError(
                        f"run {run_id} still {details.get('status')!r} after {timeout} s"
                    )
                status_due = now + (FOLLOWED_STATUS_POLL_S if following else poll)
            nap = max(0.0, min(status_due, deadline) - now)
            if tail is not None:
                nap = min(nap, ECHO_PERIOD_S)
            if following and follower is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    follower.wait(timeout=nap)
            else:
                time.sleep(nap)
            if tail is not None:
                tail.pump()

    def _pump(self, run_id: int) -> None:
        if run_id in self._echoes:
            self._echoes[run_id].pump()

    def run(
        self,
        run_config: Mapping[str, str | bool | int | float],
        timeout: float,
        *,
        flwr_args: Sequence[str] = (),
        echo: TextIO | None = None,
    ) -> RunResult:
        """Submit, follow and wait for one run; stops it (`flwr stop`) on timeout.

        `flwr_args` go to `flwr run` (e.g. ``--federation-config``); with `echo`, the run's
        log is copied there as it arrives.
        """
        started = time.monotonic()
        run_id = self.submit(run_config, *flwr_args)
        follower = self.follow(run_id, echo)
        try:
            details = self.wait_for_run(run_id, timeout)
        except RunTimeoutError:
            self.flwr("stop", str(run_id), self.connection, check=False)
            raise
        finally:
            self._pump(run_id)
        with contextlib.suppress(subprocess.TimeoutExpired):
            follower.wait(timeout=FOLLOWER_DRAIN_S)  # `flwr log --stream` ends with the run
        self._pump(run_id)  # the run's last lines
        result = RunResult(
            run_id,
            str(details.get("status")),
            time.monotonic() - started,
            follower.log_path,
            details,
        )
        LOGGER.info("run %d %s after %.1f s", run_id, result.status, result.elapsed)
        return result


def supervise(
    session: SuperLinkSession,
    start_and_run: Callable[[], RunResult],
    summary: dict[str, Any],
    summary_path: Path,
) -> int:
    """Run `start_and_run` (start the processes, run the app) under `session`, which is
    closed whatever happens (error, timeout, Ctrl-C, SIGTERM); record the outcome in
    `summary`, write it to `summary_path`, and return the command line's exit code."""
    code = EXIT_RUN_FAILED
    started = time.monotonic()
    adopt_orphans()
    with sigterm_as_interrupt():
        try:
            result = start_and_run()
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
                    "run %d ended %s (%s); its log: %s",
                    result.run_id,
                    result.status,
                    result.details.get("status-details") or "no details",
                    result.log_path,
                )
        except RunTimeoutError as exc:
            LOGGER.error("%s", exc)
            summary["status"] = "timeout"
            code = EXIT_TIMEOUT
        except LaunchError as exc:
            LOGGER.error("%s", exc)
            summary["status"] = f"error: {exc}"
        except KeyboardInterrupt:
            LOGGER.error("interrupted: stopping every process of the run")
            summary["status"] = "interrupted"
            code = EXIT_INTERRUPTED
        finally:
            session.close()
            stop_strays(session.settings.stop_grace)
            summary["wall_s"] = round(time.monotonic() - started, 1)
            write_summary(summary_path, summary)
    return code
