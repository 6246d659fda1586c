"""Errors raised by the dataset readers and the image decoder; both name the offending path."""

from __future__ import annotations

import os
from pathlib import Path


class DatasetLayoutError(ValueError):
    """A dataset root does not have the expected layout (missing/malformed file or folder)."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CorruptImageError(ValueError):
    """An image file cannot be decoded (empty, truncated, not an image, unsupported mode)."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"unreadable image {self.path}: {problem}")
