"""Whether a round counts: a round in which no site produced a usable update is no round.

Such a round leaves the global model as it was, so recording it, checkpointing it or
evaluating it would report progress that did not happen. When every sampled site failed, the
cause is nearly always one for the operator to fix (a simulation with another number of
SuperNodes than the partition has sites, a broken data root, a crashing ClientApp), so the run
stops with the sites' reasons and Flower records it as failed (`flwr ls`). When the only
replies were "out of DP budget", the sites are done, not broken: the run ends normally.
"""

from __future__ import annotations

from server.strategy import NoSitesLeftError, RoundReport

# Reasons shown in the error; the log has all of them.
MAX_REASONS = 6


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
    reasons = list(dict.fromkeys(report.failed))  # one line per distinct reason
    shown = "\n  ".join(reasons[:MAX_REASONS])
    more = f"\n  ... and {len(reasons) - MAX_REASONS} more" if len(reasons) > MAX_REASONS else ""
    raise NoUsableUpdateError(
        f"round {report.server_round}/{total_rounds}: none of the {report.sampled} sampled "
        f"site(s) produced a usable update, so the run stops here; the round is not "
        f"recorded and `resume=true` continues from the last completed round. Reasons:\n  {shown or 'no reply'}{more}"
    )
