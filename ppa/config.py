"""Compose the Hydra configuration tree in `configs/` from any working directory."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

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


def overrides_from_run_config(run_config: Mapping[str, object]) -> list[str]:
    """Hydra overrides carried by a Flower run-config: `experiment` + `overrides` (a string).

    ``experiment="demo"`` and ``overrides="federation.rounds=5 model=resnet18"`` become
    ``["experiment=demo", "federation.rounds=5", "model=resnet18"]``.
    """
    out: list[str] = []
    experiment = str(run_config.get("experiment", "") or "").strip()
    if experiment:
        out.append(f"experiment={experiment}")
    try:
        out.extend(shlex.split(str(run_config.get("overrides", "") or "")))
    except ValueError as err:
        raise ValueError(f"run-config 'overrides' is not a valid override string: {err}") from err
    return out


def load_run_config(run_config: Mapping[str, object]) -> DictConfig:
    """Compose the experiment configuration named by a Flower run-config."""
    return load_config(overrides_from_run_config(run_config))


# Groups of the run config that describe how a model was trained and must match at test time
# (input size, method switches such as DCMA offsets, the anonymiser, keypoint handling).
TRAINING_GROUPS = ("input", "ppa", "anonymizer", "pose")


def effective_config(cfg: DictConfig, trained: Mapping | None) -> DictConfig:
    """The run config with a checkpoint's training-time groups (`trained`: the config stored
    in the checkpoint), unless ``eval.use_checkpoint_config`` is off."""
    if not trained or not cfg.eval.use_checkpoint_config:
        return cfg
    merged = OmegaConf.to_container(cfg, resolve=True)
    for group in TRAINING_GROUPS:
        if group in trained:
            merged[group] = trained[group]
    return OmegaConf.create(merged)
