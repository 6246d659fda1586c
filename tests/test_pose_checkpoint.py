"""Checkpoint fetching over real HTTP on loopback: download once, verify SHA-256, never leave
a half-written or unverified file behind."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from ppa.keypoint_extraction.base import PoseBackendError
from ppa.keypoint_extraction.checkpoint import ChecksumMismatchError, fetch_checkpoint, is_url

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, more than one read chunk


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest output stays readable."""


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    served = tmp_path / "served"
    served.mkdir()
    (served / "rtm-0123abcd_20230126.pth").write_bytes(PAYLOAD)
    hits: list[str] = []
    handler = partial(type("Handler", (_CountingHandler,), {"hits": hits}), directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_url_is_downloaded_once_and_verified(server: tuple[str, list[str]], tmp_path: Path):
    base, hits = server
    url = f"{base}/rtm-0123abcd_20230126.pth"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    cache = tmp_path / "models"

    first = fetch_checkpoint(url, cache, sha256=sha[:8])
    assert first == cache / "rtm-0123abcd_20230126.pth"
    assert first.read_bytes() == PAYLOAD
    second = fetch_checkpoint(url, cache, sha256=sha)  # full digest works too
    assert second == first
    assert hits == ["/rtm-0123abcd_20230126.pth"]  # reused, not downloaded again
    assert sorted(p.name for p in cache.iterdir()) == ["rtm-0123abcd_20230126.pth"]


def test_checksum_mismatch_leaves_nothing_behind(server: tuple[str, list[str]], tmp_path: Path):
    base, _ = server
    cache = tmp_path / "models"
    with pytest.raises(ChecksumMismatchError, match="expected it to start with deadbeef"):
        fetch_checkpoint(f"{base}/rtm-0123abcd_20230126.pth", cache, sha256="deadbeef")
    assert list(cache.iterdir()) == []  # neither the target nor a .part file


def test_unreachable_checkpoint_explains_the_offline_route(
    server: tuple[str, list[str]], tmp_path: Path
):
    base, _ = server
    with pytest.raises(PoseBackendError, match=r"set pose_backend\.checkpoint to its path"):
        fetch_checkpoint(f"{base}/missing.pth", tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []


def test_local_paths_are_used_in_place(tmp_path: Path):
    local = tmp_path / "weights.pth"
    local.write_bytes(b"abc")
    sha = hashlib.sha256(b"abc").hexdigest()
    assert fetch_checkpoint(str(local), tmp_path / "unused", sha256=sha[:12]) == local
    assert not (tmp_path / "unused").exists()
    with pytest.raises(ChecksumMismatchError):
        fetch_checkpoint(str(local), tmp_path, sha256="00000000")
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        fetch_checkpoint(str(tmp_path / "nope.pth"), tmp_path)


def test_file_urls_and_bad_hash_formats(tmp_path: Path):
    local = tmp_path / "w.pth"
    local.write_bytes(b"xyz")
    got = fetch_checkpoint(local.as_uri(), tmp_path / "cache")
    assert got.read_bytes() == b"xyz" and got.parent == tmp_path / "cache"
    assert is_url("https://example.org/a.pth") and not is_url("/data/a.pth")
    for bad in ("abc", "zzzzzzzz", "0" * 65):
        with pytest.raises(ValueError, match="hex digits"):
            fetch_checkpoint(str(local), tmp_path, sha256=bad)
