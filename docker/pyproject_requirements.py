"""Print the requirements of a pyproject.toml, one per line: build-system requires, then
[project] dependencies. docker/Dockerfile installs them in a layer of their own, before the
sources are copied, so a code change does not reinstall the dependencies."""

from __future__ import annotations

import sys

import tomllib


def requirements(path: str) -> list[str]:
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    return [*data["build-system"]["requires"], *data["project"]["dependencies"]]


if __name__ == "__main__":
    sys.stdout.write("".join(f"{line}\n" for line in requirements(sys.argv[1])))
