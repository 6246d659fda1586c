"""A SuperLink of our own on a free loopback port, the ``flwr`` CLI pointed at it through a
connection in a private FLWR_HOME, and the life of a run on it: submit, stream its log, wait
for its end, stop it. The launchers subclass `SuperLinkSession`: the deployment adds TLS,
credentials and SuperNodes (`ppa.launch.deployment`); the simulation adds Flower's
simulation runtime (`ppa.launch.simulation`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TextIO

from ppa.launch.app_bundle import stage_app
from ppa.launch.flower_config import toml_string, write_flat_toml
from ppa.launch.processes import (
    LOGGER,
    CliTimeoutError,
    LaunchError,
    LogEcho,
    ManagedProcess,
    RunTimeoutError,
    free_port,
    health_ok,
    tail_text,
)
from ppa.launch.settings import (
    FLOWER_ENV,
    IN_MEMORY_STATE,
    STATUS_FINISHED_PREFIX,
    LaunchSettings,
    RunResult,
)

# Seconds: one `flwr` CLI call; `flwr run` (builds and uploads the app bundle); the log
# follower's last words after the run ended.
CLI_TIMEOUT_S = 60.0
SUBMIT_TIMEOUT_S = 300.0
FOLLOWER_DRAIN_S = 10.0
# Polling periods (s). Each `flwr ls` costs 0.6-1 s of CPU (a Python start-up), taken from
# the sites' training on a 2-core machine: while a log follower runs, its end (`flwr log
# --stream` ends with the run) is the signal and the status is only re-read as a safety net;
# without one, every RUN_POLL_S.
HEALTH_POLL_S = 0.2
RUN_POLL_S = 2.0
FOLLOWED_STATUS_POLL_S = 60.0
ECHO_PERIOD_S = 0.5


class SuperLinkSession:
    """A SuperLink of our own and the `flwr` CLI pointed at it; a context manager that stops
    every process it started.

    Layout under `output_dir`: ``logs/`` (one log per process, ``flwr-cli.log`` for the Flower
    CLI calls, ``run-<id>.log`` for the run's log), ``flwr-home/<process>/`` (each process its
    own FLWR_HOME; ``flwr-home/cli/config.toml`` holds the connection), ``superlink/state.db``,
    ``app/`` (the app's files `flwr run` bundles, `ppa.launch.app_bundle`).
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
            raise CliTimeoutError(f"`flwr {' '.join(args)}` did not answer in {timeout} s") from exc
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
        if self.settings.persistent_state:
            self.state_db.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            self._executable("flower-superlink"),
            "--host",
            self.settings.host,
            "--port",
            str(self.port),
            "--database",
            str(self.state_db) if self.settings.persistent_state else IN_MEMORY_STATE,
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
        app = stage_app(self.settings.app_dir, self.out / "app")
        answer = self.flwr_json(
            "run",
            str(app),
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
        `poll` seconds. A status call that does not answer is asked again `poll` seconds
        later, until the deadline.
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
                try:
                    details = self.run_details(run_id)
                except CliTimeoutError as exc:
                    # A slow answer is not a failed run (a loaded machine can take a minute to
                    # start the CLI): the run's own deadline bounds the retries.
                    if time.monotonic() >= deadline:
                        raise RunTimeoutError(
                            f"run {run_id}: no status after {timeout} s ({exc})"
                        ) from exc
                    LOGGER.warning("run %d: %s; asking again in %.0f s", run_id, exc, poll)
                    status_due = time.monotonic() + poll
                    continue
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
