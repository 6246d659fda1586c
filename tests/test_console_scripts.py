"""The command lines: every console script of pyproject.toml resolves to a `main`, is installed
next to the interpreter, and answers --help; the scripts/*.py shims call the same functions;
the launch and command-line packages under ppa/ import neither Flower nor Prometheus."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomli

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = tomli.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
BIN = Path(sys.executable).parent


def test_every_console_script_points_at_a_main_function() -> None:
    assert {"ppa-train", "ppa-evaluate", "ppa-simulate", "ppa-deploy", "ppa-bench"} <= set(SCRIPTS)
    for name, target in SCRIPTS.items():
        module_name, _, function = target.partition(":")
        assert function == "main", name
        assert callable(getattr(importlib.import_module(module_name), function)), name
        assert (BIN / name).is_file(), f"{name} is not installed: pip install -e ."


def test_shims_in_scripts_call_the_console_scripts_functions() -> None:
    targets = {target.partition(":")[0] for target in SCRIPTS.values()}
    shims = sorted((ROOT / "scripts").glob("*.py"))
    assert shims, "scripts/ has no shims"
    for shim in shims:
        imports = [
            node.module
            for node in ast.walk(ast.parse(shim.read_text()))
            if isinstance(node, ast.ImportFrom)
        ]
        assert imports and imports[0] in targets, f"{shim.name} imports {imports}"
        assert len(shim.read_text().splitlines()) <= 8, f"{shim.name} is more than a shim"


@pytest.mark.parametrize("name", ["ppa-simulate", "ppa-deploy", "ppa-bench"])
def test_argparse_commands_answer_help(name: str) -> None:
    done = subprocess.run(
        [str(BIN / name), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_launch_and_cli_packages_import_no_flower_or_prometheus() -> None:
    modules = [
        f"ppa.{package}.{path.stem}"
        for package in ("launch", "cli")
        for path in sorted((ROOT / "ppa" / package).glob("*.py"))
        if path.stem != "__init__"
    ] + ["ppa.node_config"]
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert {"ppa", "hydra"} <= loaded
    assert not loaded & {"flwr", "prometheus_client", "server", "client"}
