"""ProgressBar: a tqdm bar on a terminal, periodic log lines into a file or a pipe."""

from __future__ import annotations

import io
import logging

import pytest

import ppa.progress_bar as progress_bar
from ppa.progress_bar import ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gives_log_lines_and_no_carriage_returns(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_bar, "LOG_EVERY_S", 0.0)  # every refresh may log
    pipe = io.StringIO()
    with caplog.at_level(logging.INFO, logger="ppa.progress"):
        bar = ProgressBar(range(5), desc="train", leave=False, file=pipe)
        for i in bar:
            bar.set_postfix(loss=f"{i:.1f}")
    assert "\r" not in pipe.getvalue().strip("\r") and "train" not in pipe.getvalue()
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all(line.startswith("train:") for line in lines)
    assert lines[-1].startswith("train: 100%") and "5/5" in lines[-1]
    assert len(lines) == len(set(lines))  # no line repeated


def test_log_lines_are_spaced_in_time(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_bar, "LOG_EVERY_S", 3600.0)
    with caplog.at_level(logging.INFO, logger="ppa.progress"):
        for _ in ProgressBar(range(200), desc="eval", file=io.StringIO()):
            pass
    assert [r.getMessage()[:15] for r in caplog.records] == ["eval: 100%|####"]


def test_a_terminal_gets_the_bar(caplog: pytest.LogCaptureFixture) -> None:
    tty = Terminal()
    with caplog.at_level(logging.INFO, logger="ppa.progress"):
        for _ in ProgressBar(range(3), desc="train", file=tty, mininterval=0):
            pass
    assert "\r" in tty.getvalue() and "3/3" in tty.getvalue()
    assert not caplog.records
