"""A Docker engine, the project's images and one compose deployment, for the container tests.

Everything here drives the real tools: docker/engine.sh (dockerd started and stopped by PID),
docker/build_local_images.sh (images from Debian packages and this machine's wheels), Debian's
`docker` client and `docker-compose`. A ComposeStack is a context manager whose exit removes
its containers, networks and volumes (`docker-compose down -v`) whatever happened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
# Debian's client (BuildKit built in); a newer client earlier on PATH may lack buildx.
DOCKER = Path(os.environ.get("DOCKER", "/usr/bin/docker"))
COMPOSE = shutil.which("docker-compose")
ENGINE = DOCKER_DIR / "engine.sh"
BUILD = DOCKER_DIR / "build_local_images.sh"
LOCAL_FLWR = "ppa-local/flwr:1.41.0"
LOCAL_PROMETHEUS = "ppa-local/prometheus:bookworm"
CONNECTION = "isolated"  # the control container's connection name (compose.isolated.yml)
UID = 49999  # the images' user
CONTAINERS = 9  # of the SYSU deployment: SuperLink, ServerApp, six sites, Prometheus
# The SYSU deployment's sites (docker/compose.yml) and the executables Flower's images run.
SYSU_SITES = {
    "cam1": "visible",
    "cam2": "visible",
    "cam3": "infrared",
    "cam4": "visible",
    "cam5": "visible",
    "cam6": "infrared",
}
FLOWER_ENTRYPOINTS = {"flower-superlink", "flower-superexec", "flower-supernode"}

T = TypeVar("T")


def engine_available() -> str | None:
    """None when the container tests can run here, else why not."""
    if not DOCKER.exists():
        return f"{DOCKER} not installed (make system-deps installs docker.io)"
    if COMPOSE is None:
        return "docker-compose not installed (make system-deps)"
    if shutil.which("dockerd") is None and not Path("/usr/sbin/dockerd").exists():
        return "dockerd not installed (make system-deps installs docker.io)"
    if os.geteuid() != 0 and not os.access("/var/run/docker.sock", os.W_OK):
        return "not root and no access to /var/run/docker.sock"
    return None


def run(argv: Sequence[str], *, timeout: float, env=None, cwd=None, check=True):
    done = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} exited {done.returncode}:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def local_base_args() -> list[str]:
    """`docker build` arguments naming the local Flower stand-in for all three bases, as
    docker/build_local_images.sh passes them (the Dockerfile's defaults are Flower's
    registry images, unreachable here)."""
    return [
        arg
        for base in ("SUPERLINK_IMAGE", "SUPERNODE_IMAGE", "SUPEREXEC_IMAGE")
        for arg in ("--build-arg", f"{base}={LOCAL_FLWR}")
    ]


def start_engine() -> bool:
    """Start dockerd unless an engine answers; True when this call started it."""
    # Containers get the CPU weight of as many host processes as the deployment has
    # containers (docker/engine.sh: on cgroup v1 they would otherwise weigh as one).
    env = {**os.environ, "ENGINE_CPU_SHARES": str(1024 * CONTAINERS)}
    done = run(["bash", ENGINE, "start"], timeout=180, env=env)
    return done.stdout.strip().endswith("started")


def stop_engine() -> None:
    run(["bash", ENGINE, "stop"], timeout=120)


def build_images(timeout: float) -> dict[str, int]:
    """docker/build_local_images.sh; returns the seconds of each step it ran."""
    done = run(["bash", BUILD], timeout=timeout)
    times = {}
    for line in done.stdout.splitlines():
        if line.startswith("build-time "):
            _, step, seconds = line.split()
            times[step] = int(seconds)
    return times


def image_size(image: str) -> int:
    done = run([DOCKER, "image", "inspect", "--format", "{{.Size}}", image], timeout=60)
    return int(done.stdout.strip())


def wait_until(predicate: Callable[[], T], timeout: float, what: str, poll: float = 2.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def runs_program(container: str, program: str) -> bool:
    """Whether a process of the container (its id, not a compose service: docker-compose takes
    seconds per call on a busy host) runs `program` (its argv[0], or argv[1] under an
    interpreter), as `docker top` lists them."""
    lines = run([DOCKER, "top", container], timeout=60).stdout.splitlines()
    start = lines[0].index("CMD")
    return any(
        program in [Path(arg).name for arg in line[start:].split()[:2]] for line in lines[1:]
    )


def chown_tree(path: Path, uid: int = UID) -> None:
    """Give a host folder to the images' user (bind mounts keep host ownership)."""
    for item in [path, *path.rglob("*")]:
        os.chown(item, uid, uid)


class ComposeStack:
    """One compose project (unique name) of docker/ files; `down -v` on exit."""

    def __init__(self, files: Sequence[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.project = f"ppatest{uuid.uuid4().hex[:8]}"
        self.files = list(files)
        self.env = {**os.environ, **env, "DOCKER_HOST": os.environ.get("DOCKER_HOST", "")}
        if not self.env["DOCKER_HOST"]:
            del self.env["DOCKER_HOST"]
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.run_ids: list[int] = []  # Flower runs submitted; their ServerApp logs are kept

    def argv(self, *args: str) -> list[str]:
        argv = [COMPOSE, "-p", self.project]
        for name in self.files:
            argv += ["-f", str(DOCKER_DIR / name)]
        return [*argv, *args]

    def compose(self, *args: str, timeout: float = 300, check: bool = True):
        return run(self.argv(*args), timeout=timeout, env=self.env, cwd=DOCKER_DIR, check=check)

    def __enter__(self) -> ComposeStack:
        return self

    def __exit__(self, *exc: object) -> None:
        try:  # keep the logs of a failed run for the reader
            logs = self.compose("logs", "--no-color", timeout=120, check=False)
            (self.log_dir / f"{self.project}.log").write_text(logs.stdout + logs.stderr)
            # The ServerApp runs in a subprocess of the SuperExec that ships its output to the
            # SuperLink, not to the container's log: ask the SuperLink for it.
            for run_id in self.run_ids:
                done = self.control(
                    "log", str(run_id), CONNECTION, "--show", timeout=120, check=False
                )
                path = self.log_dir / f"{self.project}-run-{run_id}.log"
                path.write_text(done.stdout + done.stderr)
        finally:
            self.compose("down", "-v", "--remove-orphans", "-t", "10", timeout=300, check=False)

    # ---- containers

    def up(self, *services: str, timeout: float = 600) -> None:
        self.compose("up", "-d", "--no-build", *services, timeout=timeout)

    def container(self, service: str) -> str:
        done = self.compose("ps", "-q", service)
        ids = done.stdout.split()
        assert len(ids) == 1, (service, ids)
        return ids[0]

    def inspect(self, service: str) -> dict[str, Any]:
        done = run([DOCKER, "inspect", self.container(service)], timeout=60)
        return json.loads(done.stdout)[0]

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return state.get("Health", {}).get("Status", "none")

    def exec(self, service: str, *argv: str, timeout: float = 120, check: bool = True):
        return self.compose("exec", "-T", service, *argv, timeout=timeout, check=check)

    def logs(self, service: str) -> str:
        done = self.compose("logs", "--no-color", service, timeout=120, check=False)
        return done.stdout + done.stderr

    def control(self, *argv: str, timeout: float = 300, check: bool = True):
        """The flwr CLI in the control container on the compose network."""
        return self.compose("run", "--rm", "-T", "control", *argv, timeout=timeout, check=check)

    def flwr_json(self, *argv: str, timeout: float = 120) -> dict[str, Any]:
        done = self.control(*argv, "--format", "json", timeout=timeout)
        text = done.stdout
        return json.loads(text[text.index("{") :])
