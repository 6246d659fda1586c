"""Plain `flwr run .` as a Flower user types it, isolated for tests, and cleaned up by PID.

`flwr run` against the `:local:` connection starts a detached `flower-superlink` (and its
`flower-superexec`, `flwr-simulation`, Ray) that outlives the command. Here every such process
carries the test's own FLWR_HOME in its environment and listens on free loopback ports
(Flower's FLWR_LOCAL_* variables), so the test finds exactly its own processes and stops them
by PID: the SuperLink first (its children follow it), then any straggler.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"
# flwr waits 15 s for its detached SuperLink; on a busy shared machine that is sometimes
# too short, and the next `flwr run` finds it up.
SUPERLINK_SLOW = "Failed to start local SuperLink within"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_with(marker: str) -> dict[int, str]:
    """Live processes whose environment or command line contains `marker`: pid -> command."""
    found = {}
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":
                continue
            blob = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if needle in blob:
            found[int(entry.name)] = command
    return found


class LocalFlower:
    """A Flower home of its own for `flwr run .` on the `:local:` SuperLink."""

    def __init__(self, home: Path, workdir: Path, extra_env: dict[str, str] | None = None):
        self.home = home
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = dict(
            os.environ,
            FLWR_HOME=str(home),
            PPA_WORKDIR=str(workdir),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
            FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
            PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
            OMP_NUM_THREADS="1",
            **(extra_env or {}),
        )

    def flwr(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=REPO,
        )

    def ensure_superlink(self, attempts: int = 3) -> None:
        """Start the `:local:` SuperLink (any `flwr` call on it does), retrying when a busy
        machine makes it miss flwr's 15 s start-up limit."""
        for _attempt in range(attempts):
            proc = self.flwr("ls", "--format", "json", timeout=180)
            if proc.returncode == 0 and SUPERLINK_SLOW not in proc.stdout + proc.stderr:
                return
        raise AssertionError(f"the local SuperLink did not start:\n{proc.stdout}{proc.stderr}")

    def run(self, *args: str, timeout: float = 900) -> tuple[str, subprocess.CompletedProcess]:
        """`flwr run . <args> --stream` to its end; returns the run id and the process."""
        for _attempt in range(3):
            proc = self.flwr("run", ".", *args, "--stream", timeout=timeout)
            if SUPERLINK_SLOW not in proc.stdout + proc.stderr:
                break
        match = re.search(r"started run (\d+)", proc.stdout + proc.stderr)
        assert match, f"no run id in flwr run's output:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        return match.group(1), proc

    def status(self, run_id: str) -> dict:
        """The run's entry in `flwr ls --format json` (status, status-details, ...)."""
        proc = self.flwr("ls", "--run-id", run_id, "--format", "json", timeout=120)
        listing = json.loads(proc.stdout)
        (run,) = [r for r in listing["runs"] if str(r["run-id"]) == run_id]
        return run

    def stop(self, grace: float = 20.0) -> list[str]:
        """Stop every process of this Flower home by PID; returns what had to be killed."""
        marker = str(self.home)
        for pid, command in processes_with(marker).items():
            if "flower-superlink" in command:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        killed = []
        for pid, command in processes_with(marker).items():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(command)
            except ProcessLookupError:
                pass
        return killed
