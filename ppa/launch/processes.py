"""Child processes a launcher starts and stops: each in its own process group, logging to a
file, stopped by PID together with every helper it started (found through /proc), never
anything else; plus the launcher's own role as "child subreaper", so helpers that outlive
their parents (Ray workers after a simulation) are adopted and stopped too.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import TextIO

from ppa.launch.proctree import alive, command_name, descendants, reap_exited_children

LOGGER = logging.getLogger("ppa.launch")

LOOPBACK = "127.0.0.1"
# prctl(2) options: signal delivered to the child when its parent dies; adopt orphaned
# descendants (they are reparented to the nearest "subreaper" ancestor instead of init).
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


class LaunchError(RuntimeError):
    """A launched process failed to start or died, or a Flower command failed."""


class RunTimeoutError(LaunchError):
    """The run did not finish within the timeout."""


class CliTimeoutError(LaunchError):
    """A `flwr` CLI call did not answer in time (e.g. on a machine too loaded to start it)."""


def die_with_parent() -> None:
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
    strays = descendants(os.getpid())
    if strays:
        # Expected after a simulation: Ray's workers outlive `flwr-simulation` for a moment.
        LOGGER.info(
            "stopping %d helper(s) that outlived their parents: %s",
            len(strays),
            ", ".join(f"{pid} ({command_name(pid)})" for pid in sorted(strays)),
        )
    for pid, start in strays.items():
        if alive(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(p, s) for p, s in strays.items()) and time.monotonic() < deadline:
        reap_exited_children()
        time.sleep(0.1)
    for pid, start in strays.items():
        if alive(pid, start):
            LOGGER.warning("helper pid %d ignored SIGTERM for %.0f s: killing it", pid, grace)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    time.sleep(0.1 if strays else 0.0)
    reap_exited_children()
    return sorted(strays)


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
                preexec_fn=die_with_parent,
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
        tree = descendants(self._popen.pid)
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, first)
        for pid, start in tree.items():
            if alive(pid, start):
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
        while any(alive(p, s) for p, s in tree.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid, start in tree.items():
            if alive(pid, start):
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
