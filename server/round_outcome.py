"""Whether a round counts: a round in which no site produced a usable update is no round.

Such a round leaves the global model as it was, so recording it, checkpointing it or
evaluating it would report progress that did not happen. When every sampled site failed, the
cause is nearly always one for the operator to fix (a simulation with another number of
SuperNodes than the partition has sites, a broken data root, a crashing ClientApp), so the run
stops with the sites' reasons and Flower records it as failed (`flwr ls`). When the only
replies were "out of DP budget", the sites are done, not broken: the run ends normally.
"""

from __future__ import annotations

import re

from server.strategy import NoSitesLeftError, RoundReport

# Reasons shown in the error; the log has all of them.
MAX_REASONS = 6


_NODE_PREFIX = re.compile(r"^node \d+: ")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Flower wraps a ClientApp's exception in Ray's traceback; the cause follows this marker.
_CLIENT_MESSAGE = "Message: "


def condense_reason(reason: str) -> str:
    """The cause in a failed reply's reason, without node id, traceback or colour codes."""
    text = _ANSI.sub("", _NODE_PREFIX.sub("", reason.strip()))
    if _CLIENT_MESSAGE in text:
        text = text.rsplit(_CLIENT_MESSAGE, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    cause = lines[-1] if lines else text
    return cause.rstrip("'>").strip()


class NoUsableUpdateError(RuntimeError):
    """No site of a round produced a usable update; the run cannot make progress."""


def require_usable_update(report: RoundReport, total_rounds: int) -> None:
    """Raise unless `report`'s round aggregated at least one site's update."""
    if report.replied:
        return
    if report.exhausted and not report.failed:
        raise NoSitesLeftError(
            f"round {report.server_round}: every sampled site is out of DP budget"
        )
    # One line per distinct cause, with how many sites it hit.
    counts: dict[str, int] = {}
    for reason in report.failed:
        cause = condense_reason(reason)
        counts[cause] = counts.get(cause, 0) + 1
    reasons = [f"{n} site(s): {cause}" for cause, n in counts.items()]
    shown = "\n  ".join(reasons[:MAX_REASONS])
    more = f"\n  ... and {len(reasons) - MAX_REASONS} more" if len(reasons) > MAX_REASONS else ""
    raise NoUsableUpdateError(
        f"round {report.server_round}/{total_rounds}: none of the {report.sampled} sampled "
        f"site(s) produced a usable update, so the run stops here; the round is not "
        f"recorded and `resume=true` continues from the last completed round. "
        f"Reasons:\n  {shown or 'no reply'}{more}"
    )
