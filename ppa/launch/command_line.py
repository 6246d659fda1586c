"""What the launchers' command lines share: the options (which experiment and Hydra
overrides, resume, limits, folders; overrides and options may be mixed in any order), exit
codes, logging, the checked composition of the configuration, and `supervise`, which runs a
launcher's work under a session and stops everything afterwards.

`supervise` stops every process on success, error, timeout, Ctrl-C or SIGTERM; as a Linux
"child subreaper" the launcher also adopts and stops helpers that outlived their parents (Ray
workers after a simulation), so nothing it started keeps running. It writes the launcher's
JSON summary and returns its exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ppa.launch.processes import (
    LOGGER,
    LaunchError,
    RunTimeoutError,
    adopt_orphans,
    stop_strays,
)
from ppa.launch.session import SuperLinkSession
from ppa.launch.settings import PROJECT_ROOT, RunResult

T = TypeVar("T")

DEFAULT_EXPERIMENT = "demo"  # the pyproject's [tool.flwr.app.config] default
# Exit codes of the launchers' command lines.
EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 124, 130


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
