"""Round progress for the log: `round 7/16`, the elapsed time and an estimate of the rest.

The estimate is the mean duration of the rounds run in this process times the rounds left
(rounds of a resumed run's earlier process are not timed, so they do not count).
"""

from __future__ import annotations

import time
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    """`1:02:03` / `2:03` (h:mm:ss / m:ss), the way a user reads a clock."""
    total = round(max(seconds, 0.0))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RoundProgress:
    """Counts rounds `first..total` as they finish and says how long the rest will take."""

    def __init__(
        self, total: int, first: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = total
        self.first = first
        self.clock = clock
        self.started = clock()
        self.finished = 0

    def round_label(self, server_round: int) -> str:
        return f"round {server_round}/{self.total}"

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self, server_round: int) -> float | None:
        """Seconds left after `server_round` finished; None before any round was timed."""
        if self.finished == 0:
            return None
        return self.elapsed() / self.finished * (self.total - server_round)

    def finish(self, server_round: int) -> str:
        """Record that `server_round` finished; the time part of its log line."""
        self.finished += 1
        left = self.remaining(server_round)
        estimate = f", about {format_duration(left)} left" if left is not None else ""
        return f"elapsed {format_duration(self.elapsed())}{estimate}"
