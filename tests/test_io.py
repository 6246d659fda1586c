"""ppa.io: an atomic write replaces the file whole or leaves the old one."""

from __future__ import annotations

import json

import pytest

from ppa.io import atomic_write, atomic_write_json, atomic_write_text


def test_writes_text_json_and_bytes(tmp_path) -> None:
    target = tmp_path / "deep" / "er" / "file.json"
    assert atomic_write_json(target, {"a": [1, 2]}, indent=2) == target
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    atomic_write_text(target, "replaced\n")
    assert target.read_text() == "replaced\n"
    with atomic_write(tmp_path / "blob.bin") as handle:
        handle.write(b"\x00\x01")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path) -> None:
    target = tmp_path / "history.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(target, "w") as handle:
        handle.write("half a new fi")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]
    with pytest.raises(TypeError):
        atomic_write_json(target, {"not": object()})
    assert target.read_text() == "old"


def test_only_write_modes(tmp_path) -> None:
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "x", "a"):
        pass
