"""Errors raised by the dataset readers and the image decoder; both name the offending path."""

from __future__ import annotations

import os
import re
from pathlib import Path


class DatasetLayoutError(ValueError):
    """A dataset root does not have the expected layout (missing/malformed file or folder)."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CorruptImageError(ValueError):
    """An image file cannot be decoded (empty, truncated, not an image, unsupported mode).

    ``CorruptImageError(message)`` (one argument) is the form torch's DataLoader uses to re-raise
    an error from a worker process (``type(err)(formatted_worker_traceback)``): accepting it keeps
    the type across workers, so ``except CorruptImageError`` works whatever ``num_workers`` is;
    `path` is then recovered from the message (None if it cannot be).
    """

    def __init__(self, path: str | os.PathLike, problem: str | None = None):
        if problem is None:
            message = str(path)
            found = _WORKER_PATH.findall(message)
            self.path: Path | None = Path(found[-1]) if found else None
            self.problem = message
            super().__init__(message)
            return
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"unreadable image {self.path}: {problem}")


# The path in a formatted CorruptImageError message (see CorruptImageError's docstring).
_WORKER_PATH = re.compile(r"unreadable image (.+?): ")
