"""The app directory handed to `flwr run`: only the files the Flower app bundle can hold.

Why: `flwr run <dir>` builds the bundle (FAB) by walking every file under `<dir>` and only
then dropping what ``.gitignore`` excludes. In a working checkout that walk crosses the
virtual environments, the datasets and the outputs (several GB, about 100k files) and takes
about 8 s of every launch, a few percent of `make demo`. When the app directory is a git work
tree, the launchers submit a copy of the files git does not ignore (tracked, or untracked and
not ignored: what the bundle would hold anyway) instead; anywhere else (an installed copy, a
container without git) they submit the directory itself. `flwr run` applies its own rules to
the copy, so the bundle, and its hash, are the same either way.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

LOGGER = logging.getLogger(__name__)
GIT_TIMEOUT_S = 30.0


def unignored_files(app_dir: Path) -> list[str] | None:
    """Paths (relative to `app_dir`) of the regular files under it that git tracks or would
    track; None when `app_dir` is not in a git work tree or git is not installed."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=app_dir,
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return None
    names = sorted({n for n in listed.stdout.decode().split("\0") if n})
    # A tracked file deleted from the work tree is listed but absent; links are left out, as
    # the bundle leaves them out.
    return [n for n in names if (app_dir / n).is_file() and not (app_dir / n).is_symlink()]


def stage_app(app_dir: Path, dest: Path) -> Path:
    """The directory to submit for `app_dir`: `dest` filled with `app_dir`'s unignored files
    (replacing what `dest` held), or `app_dir` itself outside a git work tree."""
    names = unignored_files(app_dir)
    if names is None or "pyproject.toml" not in names:
        LOGGER.debug("submitting %s as it is: not a git work tree holding the app", app_dir)
        return app_dir
    if dest.exists():
        shutil.rmtree(dest)
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(app_dir / name, target)
    LOGGER.debug("staged %d files of %s in %s", len(names), app_dir, dest)
    return dest
