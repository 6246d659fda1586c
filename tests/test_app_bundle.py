"""The app directory the launchers hand to `flwr run` (ppa.launch.app_bundle)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from ppa.launch.app_bundle import stage_app, unignored_files

PROJECT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture()
def app_repo(tmp_path: Path) -> Path:
    """A git work tree shaped like the project: an app, an environment, data and outputs."""
    repo = tmp_path / "src" / "myapp"
    (repo / "server").mkdir(parents=True)
    shutil.copyfile(PROJECT / "pyproject.toml", repo / "pyproject.toml")
    (repo / ".gitignore").write_text(".venv/\n/data/\n/outputs/\n*.pt\n")
    (repo / "server" / "app.py").write_text("ROUNDS = 3\n")
    (repo / "configs").mkdir()
    (repo / "configs" / "config.yaml").write_text("seed: 0\n")
    (repo / "gone.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "app")
    (repo / "gone.py").unlink()  # tracked, deleted from the work tree
    (repo / "server" / "new_rule.py").write_text("y = 2\n")  # untracked, not ignored
    for ignored in (".venv/lib/site.py", "data/sysu/cam1/0001.json", "outputs/run/history.json"):
        (repo / ignored).parent.mkdir(parents=True, exist_ok=True)
        (repo / ignored).write_text("{}\n")
    (repo / "server" / "model.pt").write_bytes(b"\0")
    os.symlink(repo / "server" / "app.py", repo / "server" / "linked.py")
    return repo


def test_unignored_files_are_what_git_would_commit(app_repo: Path) -> None:
    assert unignored_files(app_repo) == [
        ".gitignore",
        "configs/config.yaml",
        "pyproject.toml",
        "server/app.py",
        "server/new_rule.py",
    ]


def test_staged_copy_holds_those_files_and_replaces_an_old_copy(
    app_repo: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "run" / "app"
    (dest / "server").mkdir(parents=True)
    (dest / "server" / "stale.py").write_text("old = True\n")
    assert stage_app(app_repo, dest) == dest
    staged = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert staged == unignored_files(app_repo)
    assert (dest / "server" / "new_rule.py").read_text() == "y = 2\n"


def test_the_bundle_of_the_staged_copy_is_the_bundle_of_the_app(
    app_repo: Path, tmp_path: Path
) -> None:
    staged = stage_app(app_repo, tmp_path / "run" / "app")
    assert build_fab_from_disk(staged) == build_fab_from_disk(app_repo)


def test_outside_a_git_work_tree_the_directory_is_submitted_as_it_is(tmp_path: Path) -> None:
    plain = tmp_path / "installed"
    plain.mkdir()
    shutil.copyfile(PROJECT / "pyproject.toml", plain / "pyproject.toml")
    dest = tmp_path / "run" / "app"
    assert stage_app(plain, dest) == plain
    assert not dest.exists()
