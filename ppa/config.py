"""Compose the Hydra configuration tree in `configs/` from any working directory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
WORKDIR_ENV = "PPA_WORKDIR"


def load_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose `configs/<config_name>.yaml` with Hydra overrides (e.g. ``["model=tiny"]``)."""
    if not CONFIG_DIR.is_dir():
        raise FileNotFoundError(f"configuration directory not found: {CONFIG_DIR}")
    if GlobalHydra.instance().is_initialized():
        # Inside a @hydra.main script: compose against the already-initialised search path.
        return compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def resolve_path(path: str | os.PathLike) -> Path:
    """Resolve a configured path: absolute as is, relative against $PPA_WORKDIR or the cwd.

    Flower runs the ServerApp/ClientApp from its own directories, so relative paths in the
    config (``data/synthetic_sysu``, ``outputs/demo``) are anchored at the project's working
    directory, which `make` and the deployment script export as PPA_WORKDIR.
    """
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return p
    base = os.environ.get(WORKDIR_ENV)
    return (Path(base) if base else Path.cwd()) / p
