"""Where and how a launcher's Flower processes run (`LaunchSettings`), the environment they
get, and the outcome of one run (`RunResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppa.launch.processes import LOOPBACK

# The Flower app folder: the project (pyproject.toml with [tool.flwr.app]).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
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
# `flower-superlink --database` value for state kept in the process: flwr's
# `flwr.supercore.constant.FLWR_IN_MEMORY_DB_NAME`, spelt out because importing flwr costs the
# launchers about a second and they never import it otherwise.
IN_MEMORY_STATE = ":flwr-in-memory:"


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
    # SuperLink state (runs, registered nodes, message objects) in an SQLite file that survives
    # a SuperLink restart; False keeps it in the SuperLink's memory. flwr 1.41's SQLite state
    # answers concurrent object pushes from several sites with "database is locked" (HTTP 500,
    # which a SuperNode does not retry: its reply is lost), so the file is a choice, not a given.
    persistent_state: bool = True

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
