"""Round log lines (server/progress.py) and when a round counts (server/round_outcome.py)."""

from __future__ import annotations

import pytest

from server.progress import RoundProgress, format_duration
from server.round_outcome import NoUsableUpdateError, condense_reason, require_usable_update
from server.strategy import NoSitesLeftError, RoundReport


class Clock:
    """A clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_durations_read_like_a_clock() -> None:
    assert format_duration(0) == "0:00"
    assert format_duration(59.6) == "1:00"
    assert format_duration(125) == "2:05"
    assert format_duration(3 * 3600 + 62) == "3:01:02"


def test_progress_names_the_total_the_elapsed_time_and_the_rest() -> None:
    clock = Clock()
    progress = RoundProgress(16, clock=clock)
    clock.now += 30.0
    assert progress.round_label(1) == "round 1/16"
    assert progress.finish(1) == "elapsed 0:30, about 7:30 left"  # 15 x 30 s
    clock.now += 10.0
    assert progress.finish(2) == "elapsed 0:40, about 4:40 left"  # 14 x 20 s
    clock.now += 20.0
    assert progress.finish(16) == "elapsed 1:00, about 0:00 left"


def test_a_resumed_run_estimates_from_its_own_rounds() -> None:
    clock = Clock()
    progress = RoundProgress(10, first=7, clock=clock)
    assert progress.remaining(7) is None
    clock.now += 12.0
    assert progress.round_label(7) == "round 7/10"
    assert progress.finish(7) == "elapsed 0:12, about 0:36 left"  # 3 x 12 s


RAY_REASON = (
    "node 17: <class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::"
    'ClientAppActor.run()\x1b[39m (pid=1)\n  File "client/site.py", line 210, in _pick\n'
    "client.site.NodeConfigError: the partition has 6 sites\n\nflwr.clientapp.client_app."
    "ClientAppException: \nException ClientAppException occurred. Message: the partition has "
    "6 sites but the simulation runs 2 SuperNodes: run `flwr run . --federation-config "
    '"num-supernodes=6"`\'>'
)


def test_failure_reasons_are_condensed_to_their_cause() -> None:
    assert condense_reason(RAY_REASON) == (
        "the partition has 6 sites but the simulation runs 2 SuperNodes: run "
        '`flwr run . --federation-config "num-supernodes=6"`'
    )
    assert condense_reason("site 'cam1': num-examples=0.0") == "site 'cam1': num-examples=0.0"


def test_a_round_without_a_usable_update_stops_the_run_with_the_reasons() -> None:
    report = RoundReport(1, sampled=2, failed=[RAY_REASON, RAY_REASON.replace("17", "18")])
    with pytest.raises(NoUsableUpdateError) as err:
        require_usable_update(report, 16)
    text = str(err.value)
    assert text.startswith("round 1/16: none of the 2 sampled site(s) produced a usable update")
    assert "2 site(s): the partition has 6 sites" in text and "num-supernodes=6" in text
    assert "Traceback" not in text and "ray::" not in text

    timeout = RoundReport(3, sampled=4, failed=["2 site(s) did not reply before the round timeout"])
    with pytest.raises(NoUsableUpdateError, match="round 3/5: none of the 4"):
        require_usable_update(timeout, 5)


def test_out_of_budget_sites_end_the_run_normally_and_one_reply_is_enough() -> None:
    exhausted = RoundReport(4, sampled=2, exhausted=["node 1: budget", "node 2: budget"])
    with pytest.raises(NoSitesLeftError, match="out of DP budget"):
        require_usable_update(exhausted, 8)
    require_usable_update(RoundReport(2, sampled=3, replied=["cam1"], failed=["x", "y"]), 8)
