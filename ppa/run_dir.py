"""Run folders: every run writes to a folder of its own, with a stable `latest` pointer.

The configuration's default ``output_dir`` is ``<output_root>/<YYYYmmdd-HHMMSS>``
(``output_root`` is ``outputs/<run_name>``), so two runs of one experiment never write over
each other; ``<output_root>/latest`` is a symlink to the newest run's folder, for the places
that want a fixed path (``outputs/demo/latest/model_latest.pt``). An explicit ``output_dir=``
is used as given, without a pointer. A Hydra multirun gives every job its own sub-folder
(``<output_dir>/<job number>``, `hydra.sweep` in configs/config.yaml; `job_output_dir` reads
it back).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, open_dict

from ppa.config import resolve_path

logger = logging.getLogger(__name__)

LATEST = "latest"
EVALUATIONS = "evaluate"  # <run>/evaluate/<checkpoint>-<date-time>/: scripts/evaluate.py


def latest_run(root: Path) -> Path | None:
    """The folder `<root>/latest` points at, or None when there is no such run."""
    pointer = root / LATEST
    if not pointer.is_symlink() and not pointer.is_dir():
        return None
    target = pointer.resolve()
    return target if target.is_dir() else None


def point_latest(run_dir: Path, root: Path) -> Path:
    """Make `<root>/latest` point at `run_dir` (a folder directly under `root`), atomically:
    a reader sees the old or the new run, never a missing pointer."""
    if run_dir.parent.resolve() != root.resolve():
        raise ValueError(f"{run_dir} is not a folder directly under {root}")
    pointer = root / LATEST
    temporary = root / f".{LATEST}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(run_dir.name, target_is_directory=True)  # relative: survives a move
    os.replace(temporary, pointer)
    return pointer


def is_run_of(run_dir: Path, root: Path) -> bool:
    """True when `run_dir` is one of `root`'s timestamped run folders (not an explicit path)."""
    return run_dir.parent.resolve() == root.resolve() and run_dir.name != LATEST


def _anchor(path: str, workdir: Path | None) -> Path:
    if workdir is None:
        return resolve_path(path)
    p = Path(path).expanduser()
    return p if p.is_absolute() else workdir / p


def claim_run_dir(cfg: DictConfig, *, resume: bool = False, workdir: Path | None = None) -> Path:
    """The run's output folder, created; `cfg.output_dir` is set to it (absolute).

    With `resume`, a fresh default folder is replaced by the newest earlier run of the same
    `output_root` (its `latest`), so `resume=true` continues that run in place. A default
    folder becomes the root's `latest`. Relative paths are anchored at `workdir` when given,
    else as `ppa.config.resolve_path` anchors them.
    """
    out = _anchor(str(cfg.output_dir), workdir).resolve()
    root = _anchor(str(cfg.output_root), workdir).resolve()
    default = is_run_of(out, root)
    if resume and default and not out.exists():
        previous = latest_run(root)
        if previous is not None:
            logger.info("resume: continuing the newest run of %s, %s", root, previous)
            out = previous
        else:
            logger.warning("resume: no earlier run under %s; starting %s", root, out)
    out.mkdir(parents=True, exist_ok=True)
    if default:
        point_latest(out, root)
    with open_dict(cfg):
        cfg.output_dir = str(out)
    return out


def job_output_dir(cfg: DictConfig) -> DictConfig:
    """Inside a Hydra multirun job, point `cfg.output_dir` at the job's own folder,
    ``<output_dir>/<job number>`` (Hydra's sweep sub-folder). A single run keeps its
    `output_dir` (relative paths anchored at PPA_WORKDIR, as everywhere)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return cfg
    with open_dict(cfg):
        cfg.output_dir = str(HydraConfig.get().runtime.output_dir)
    return cfg


def checkpoint_run_dir(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to: `<run>/checkpoints/x.pt` and `<run>/x.pt`
    both give `<run>` (symlinks such as `latest` resolved, so results land in the real run)."""
    checkpoint = checkpoint.resolve()
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent


def evaluation_dir(checkpoint: Path, folder: str | Path | None = None) -> Path:
    """Where an evaluation of `checkpoint` writes: `folder` when named, else a new
    ``<checkpoint's run>/evaluate/<checkpoint name>-<date-time>/`` (with `latest` beside it),
    so an evaluation never writes over another run's or an earlier evaluation's results."""
    if folder:
        out = resolve_path(folder)
        out.mkdir(parents=True, exist_ok=True)
        return out
    base = checkpoint_run_dir(checkpoint) / EVALUATIONS
    base.mkdir(parents=True, exist_ok=True)
    stem = f"{checkpoint.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    for attempt in range(1, 1000):
        out = base / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            out.mkdir()
        except FileExistsError:
            continue
        point_latest(out, base)
        return out
    raise FileExistsError(f"no free evaluation folder for {stem} under {base}")
