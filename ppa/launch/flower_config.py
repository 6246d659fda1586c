"""Flower's configuration formats as the launchers write them: the app's run-config (a flat
TOML file for ``flwr run --run-config``), ``k=v`` config strings (``--node-config``,
``--federation-config``), TOML strings for the CLI's connection file, and paths anchored the
way the apps anchor them.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

# Characters flwr's `k=v` config parser (--node-config, --federation-config) cannot carry
# inside a quoted value.
CONFIG_FORBIDDEN_CHARS = ('"', "'", "\n")


def toml_string(value: str) -> str:
    """`value` as a TOML basic string."""
    # JSON string escapes are valid TOML basic-string escapes (json.dumps never emits '\/').
    return json.dumps(value)


def write_flat_toml(path: Path, values: Mapping[str, str | bool | int | float]) -> Path:
    """Write a flat TOML table (the `flwr run --run-config FILE.toml` format)."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, (int, float)):
            rendered = repr(value)
        else:
            rendered = toml_string(str(value))
        lines.append(f"{key} = {rendered}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def format_config_args(
    values: Mapping[str, str | int | float | bool], option: str = "--node-config"
) -> str:
    """Render `values` as a flwr ``k=v`` config string (``--node-config``,
    ``--federation-config``): ``k="v" k2=3 k3=true``."""
    parts = []
    for key, value in values.items():
        if not key or any(c.isspace() or c == "=" for c in key):
            raise ValueError(f"{option} key {key!r} must be non-empty, without '=' or spaces")
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, (int, float)):
            rendered = repr(value)
        else:
            text = str(value)
            bad = [c for c in CONFIG_FORBIDDEN_CHARS if c in text]
            if bad:
                raise ValueError(
                    f"{option} value of {key!r} contains {bad[0]!r}, which flwr's "
                    f"{option} parser cannot carry: {text!r}"
                )
            rendered = json.dumps(text)
        parts.append(f"{key}={rendered}")
    return " ".join(parts)


def build_run_config(
    experiment: str, overrides: Sequence[str], resume: bool
) -> dict[str, str | bool]:
    """The app's run-config: `experiment`, space-separated Hydra `overrides`, `resume`.

    The apps split `overrides` with shlex (ppa.config.overrides_from_run_config), so each
    override is shell-quoted here: the apps then compose exactly the overrides the launcher
    composed, quotes included (``attack='nan'`` stays the string "nan", not a float NaN).
    """
    for override in overrides:
        if not override or any(c.isspace() for c in override):
            raise ValueError(
                f"Hydra override {override!r} is empty or contains whitespace; "
                "the run-config key `overrides` is space-separated"
            )
    return {"experiment": experiment, "overrides": shlex.join(overrides), "resume": resume}


def anchored(path: str | os.PathLike, workdir: Path) -> Path:
    """`path` with ``~`` expanded; a relative path is anchored at `workdir`, as the apps
    anchor it at PPA_WORKDIR (ppa.config.resolve_path)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else workdir / p
