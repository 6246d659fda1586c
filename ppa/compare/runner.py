"""Run a comparison's jobs as subprocesses, a few at a time, each logging to its own file."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ppa.compare.plan import Job
from ppa.cpu_threads import THREADS_ENV, thread_env, threads_per_site

logger = logging.getLogger(__name__)


@dataclass
class Finished:
    job: Job
    returncode: int
    seconds: float
    log: Path


def run_jobs(
    jobs: Sequence[Job], *, parallel: int, timeout: float, log_dir: Path, cwd: Path
) -> list[Finished]:
    """Run every job (at most `parallel` at once); a job past `timeout` seconds is terminated
    (its process group) and counts as failed with return code 124.

    Each job gets an equal share of the host's cores as its torch / OpenMP threads (unless
    ``PPA_CPU_THREADS`` is set): two trainings that each start one thread per core spin at
    OpenMP barriers for cores the other holds, and on the 2-core machine a centralised epoch
    went from 20 s alone to over 3 minutes next to a federation."""
    if parallel < 1:
        raise ValueError(f"compare.parallel must be >= 1, got {parallel}")
    env = os.environ.copy()
    if not env.get(THREADS_ENV, "").strip():
        env.update(thread_env(threads_per_site(parallel)))
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: list[tuple[Job, subprocess.Popen, float, Path, object]] = []
    done: list[Finished] = []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                log = log_dir / f"{job.name}.log"
                handle = log.open("w")
                logger.info("start %s: %s", job.name, " ".join(job.command))
                proc = subprocess.Popen(
                    job.command,
                    cwd=cwd,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                )
                running.append((job, proc, time.monotonic(), log, handle))
            time.sleep(2.0)
            still = []
            for job, proc, start, log, handle in running:
                elapsed = time.monotonic() - start
                code = proc.poll()
                if code is None and elapsed > timeout:
                    os.killpg(proc.pid, 15)
                    proc.wait()
                    code = 124
                if code is None:
                    still.append((job, proc, start, log, handle))
                    continue
                handle.close()
                level = logging.INFO if code == 0 else logging.ERROR
                logger.log(
                    level, "%s finished: rc=%d in %.0fs (log %s)", job.name, code, elapsed, log
                )
                done.append(Finished(job, code, elapsed, log))
            running = still
    finally:
        for _job, proc, _, _, handle in running:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                proc.wait()
            handle.close()
    return done
