"""Locate a model checkpoint: a local file as is, or a URL downloaded once into a cache folder.

OpenMMLab publishes checkpoints named ``<model>-<sha256[:8]>_<date>.pth``: the 8 hex digits are
the start of the file's SHA-256, so a configured prefix verifies the download end to end.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ppa.keypoint_extraction.base import PoseBackendError

logger = logging.getLogger(__name__)

URL_SCHEMES = ("http", "https", "file")
_CHUNK = 1 << 20
_MIN_SHA_PREFIX = 8
_HEX = re.compile(r"[0-9a-f]+")


class ChecksumMismatchError(PoseBackendError):
    """A checkpoint's SHA-256 does not start with the configured prefix."""


def is_url(location: str) -> bool:
    """True for ``http(s)://`` and ``file://`` locations."""
    return urllib.parse.urlsplit(location).scheme in URL_SCHEMES


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_sha(expected: str | None) -> str | None:
    if expected is None or str(expected).strip() == "":
        return None
    value = str(expected).strip().lower()
    if len(value) < _MIN_SHA_PREFIX or len(value) > 64 or not _HEX.fullmatch(value):
        raise ValueError(
            f"checkpoint sha256 {expected!r}: expected {_MIN_SHA_PREFIX}..64 hex digits"
        )
    return value


def _verify(path: Path, expected: str | None, origin: str) -> None:
    if expected is None:
        return
    actual = sha256_of(path)
    if not actual.startswith(expected):
        raise ChecksumMismatchError(
            f"checkpoint {path} (from {origin}) has sha256 {actual}, expected it to start with "
            f"{expected}"
        )


def fetch_checkpoint(
    location: str,
    cache_dir: str | os.PathLike,
    *,
    sha256: str | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """Return a local path to the checkpoint at `location` (a file path or a URL).

    A URL is downloaded into `cache_dir` under its file name, at most once: a file already
    there is reused (after the checksum check). The download goes to a temporary file that is
    verified before it is renamed into place, so an interrupted or corrupt download never
    leaves a file that a later run would trust.
    """
    expected = _normalise_sha(sha256)
    if not is_url(location):
        path = Path(os.path.expanduser(location))
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        _verify(path, expected, str(path))
        return path

    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(location).path)).name
    if not name:
        raise ValueError(f"checkpoint URL {location!r} does not end in a file name")
    folder = Path(cache_dir)
    target = folder / name
    if target.is_file():
        _verify(target, expected, location)
        logger.info("using cached checkpoint %s", target)
        return target

    folder.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s -> %s", location, target)
    fd, tmp_name = tempfile.mkstemp(prefix=name, suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(location, timeout=timeout_s) as response:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
            except (urllib.error.URLError, OSError) as err:
                raise PoseBackendError(
                    f"cannot download checkpoint {location}: {err}. On a machine without "
                    "internet, fetch the file elsewhere and set pose_backend.checkpoint to its "
                    "path, or use pose_backend=mediapipe (weights bundled in the wheel)"
                ) from err
        _verify(tmp, expected, location)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target
