"""Secret noise keys: one site key per owner of images, and the per-image keys derived from it.

The noise anonymiser's noise must not be regenerable by anyone who knows an image's path, or
it could be subtracted. So every owner of images (a federated site for its training images,
the central evaluator for the test set, central training for its own) holds a 256-bit site
key, made from the OS's randomness on first use and kept in a file only its user can read.
Image ``path`` gets the key ``BLAKE2b(key=site key, data=path)`` (256 bits), which keys the
ChaCha20 stream its noise is drawn from (`ppa.anonymize.prng`). Whoever holds the site key
gets the same noise back on every run and machine; without it the per-image keys (and so the
noise) are unpredictable. The site key never leaves its owner: it is not part of any
configuration, message, checkpoint, log or metric, only of the file's bytes in this process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ppa.config import resolve_path

logger = logging.getLogger(__name__)

SITE_KEY_BYTES = 32
NOISE_KEY_BYTES = 32  # one ChaCha20 key per image (ppa.anonymize.prng)
KEY_SUFFIX = ".noise-key"
KEY_DIR_ENV = "PPA_KEY_DIR"  # the docker images point it at their state volume
DEFAULT_KEY_DIR = "outputs/keys"
# Owners of images that are not federated sites.
EVALUATOR = "evaluator"  # the test set, anonymised for evaluation and the privacy report
CENTRAL = "central"  # central (non-federated) training
# Domain separation: these per-image keys are for anonymisation noise and nothing else.
_PERSON = b"ppa-noise-image"
_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class NoiseKeyError(ValueError):
    """A site key file that cannot be used."""


def read_site_key(path: Path) -> bytes:
    """The site key stored at `path`; raises NoiseKeyError unless it holds exactly 32 bytes."""
    try:
        key = path.read_bytes()
    except OSError as err:
        raise NoiseKeyError(f"cannot read noise key file {path}: {err}") from err
    if len(key) != SITE_KEY_BYTES:
        raise NoiseKeyError(
            f"noise key file {path} holds {len(key)} bytes, a site key is {SITE_KEY_BYTES} "
            "random bytes; restore the right file (deleting it makes a new key, and with it "
            "other noise for every image)"
        )
    if path.stat().st_mode & 0o077:
        logger.warning("noise key file %s is readable by other users; chmod 600 it", path)
    return key


def create_site_key(path: Path) -> bytes:
    """Make a new random site key at `path` (mode 0600) unless one is there; return the key
    stored there. Concurrent callers end up with the same key: the file appears complete or
    not at all (written beside it, then hard-linked into place)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(SITE_KEY_BYTES))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(partial, path)
            logger.info("made a new noise key at %s (keep it: it regenerates the noise)", path)
        except FileExistsError:
            pass  # another process made it first: use theirs
    finally:
        partial.unlink(missing_ok=True)
    return read_site_key(path)


def site_key(path: Path) -> bytes:
    """The site key at `path`, made on first use."""
    return read_site_key(path) if path.exists() else create_site_key(path)


class NoiseKeys:
    """Per-image noise keys of one owner: BLAKE2b of the image's relative path under the
    owner's site key. Holds the key in memory only; its repr does not show it."""

    __slots__ = ("_site_key", "source")

    def __init__(self, site_key: bytes, source: str = "<in memory>"):
        if not isinstance(site_key, bytes) or len(site_key) != SITE_KEY_BYTES:
            raise NoiseKeyError(f"a site key is {SITE_KEY_BYTES} bytes, got {len(site_key)}")
        self._site_key = site_key
        self.source = source

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> NoiseKeys:
        """The keys of the site key at `path`, made there on first use."""
        path = Path(path)
        return cls(site_key(path), str(path))

    def key_of(self, relative_path: str) -> bytes:
        """The 32-byte noise key of the image at `relative_path` (as the records name it)."""
        return hashlib.blake2b(
            relative_path.encode("utf-8"),
            key=self._site_key,
            digest_size=NOISE_KEY_BYTES,
            person=_PERSON,
        ).digest()

    def tensor(self, relative_paths: Sequence[str]) -> Tensor:
        """(B, 32) uint8: the noise keys of `relative_paths`, as a batch carries them."""
        return torch.tensor([list(self.key_of(p)) for p in relative_paths], dtype=torch.uint8).view(
            len(relative_paths), NOISE_KEY_BYTES
        )

    def __repr__(self) -> str:
        return f"NoiseKeys(source={self.source!r})"


def no_noise_keys(batch_size: int) -> Tensor:
    """(B, 0) uint8: the keys of a batch loaded without an owner's NoiseKeys; the noise
    anonymiser refuses them, the deterministic anonymisers ignore them."""
    return torch.zeros(batch_size, 0, dtype=torch.uint8)


def key_file(anonymizer_cfg: Mapping[str, Any], owner: str) -> Path:
    """Where `owner`'s site key lives: ``anonymizer.key_file`` when set (one key for whoever
    uses this configuration), else ``<key_dir>/<owner>.noise-key`` with ``anonymizer.key_dir``,
    else $PPA_KEY_DIR, else ``outputs/keys`` (relative paths under the working directory)."""
    explicit = anonymizer_cfg.get("key_file")
    if explicit:
        return resolve_path(str(explicit))
    if not _OWNER.fullmatch(owner):
        raise ValueError(f"noise key owner {owner!r} is not a plain name (letters, digits, ._-)")
    directory = anonymizer_cfg.get("key_dir") or os.environ.get(KEY_DIR_ENV) or DEFAULT_KEY_DIR
    return resolve_path(str(directory)) / f"{owner}{KEY_SUFFIX}"
