"""Progress bars that stay readable when the output is not a terminal.

A tqdm bar redraws itself with carriage returns; written to a file or a pipe (a Flower log,
`make demo > log`, CI) that becomes thousands of fragments on one line. `ProgressBar` is a
tqdm bar on a terminal and, anywhere else, a log line every `LOG_EVERY_S` seconds (and one at
the end) with the same text: ``train: 40%|####  | 4/10 [00:12<00:18, 0.33it/s, loss=1.2]``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from tqdm import tqdm

logger = logging.getLogger("ppa.progress")

# Between two log lines of one bar when the output is not a terminal: often enough to show a
# long epoch is alive, rarely enough that a log of many sites and rounds stays short.
LOG_EVERY_S = 30.0


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class ProgressBar(tqdm):
    """`tqdm` on a terminal; periodic log lines (logger ``ppa.progress``) elsewhere."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        stream = kwargs.get("file") or sys.stderr
        self.to_log = not is_terminal(stream)
        if self.to_log:
            kwargs["mininterval"] = LOG_EVERY_S
            kwargs.setdefault("miniters", 1)
            kwargs.pop("dynamic_ncols", None)  # no terminal to measure
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool | None:
        if not getattr(self, "to_log", False):
            return super().display(msg, pos)
        # tqdm refreshes on every set_postfix; the log gets one line per LOG_EVERY_S.
        now = self._time()
        if (
            msg != ""
            and self.n > 0
            and now - getattr(self, "_logged_at", self.start_t) >= (LOG_EVERY_S)
        ):
            self._log()
        return True

    def _log(self) -> None:
        text = self.__str__()
        if text != getattr(self, "_logged", None):
            logger.info("%s", text)
            self._logged = text
        self._logged_at = self._time()

    def close(self) -> None:
        if getattr(self, "to_log", False) and not self.disable and self.n > 0:
            self._log()  # the final state, once
        super().close()
