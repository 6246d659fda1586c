"""Prometheus metrics of a federated run, served over HTTP by the ServerApp.

Every series carries the run's `run_id` and `run_name` labels, and `ppa_run_info` names the
run, so successive runs (one Prometheus, one dashboard) stay apart instead of merging into one
line. Values in 0..1 end in `_ratio`; the round duration is a histogram. A site's series
(loss, epsilon, flag) disappear when it leaves: a site that did not contribute to a round has
no current value, and a stale one would read as if it had.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

logger = logging.getLogger(__name__)

RUN_LABELS = ("run_id", "run_name")
# prometheus-client's default buckets; the ServerApp passes configs/telemetry's.
DEFAULT_ROUND_BUCKETS = Histogram.DEFAULT_BUCKETS


class Telemetry:
    """The run's metrics on a private registry (several runs in one process don't collide).

    `serve()` starts prometheus-client's HTTP endpoint on host:port; `close()` stops it.
    """

    def __init__(
        self,
        run_name: str = "ppa",
        run_id: str = "",
        round_buckets: Sequence[float] = DEFAULT_ROUND_BUCKETS,
    ):
        self.registry = CollectorRegistry()
        self.run = {"run_id": str(run_id), "run_name": str(run_name)}
        reg = {"registry": self.registry}
        Info("ppa_run", "The run these series belong to", **reg).info(self.run)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, [*RUN_LABELS, *labels], **reg)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, RUN_LABELS, **reg)

        self.rounds_completed = counter("ppa_rounds_completed", "Federated rounds completed")
        self.current_round = gauge("ppa_current_round", "Last completed round")
        self.round_duration = Histogram(
            "ppa_round_duration_seconds",
            "Wall time of a round (train, aggregate, evaluate, checkpoint)",
            RUN_LABELS,
            buckets=tuple(float(b) for b in round_buckets),
            **reg,
        )
        self.sites_sampled = gauge("ppa_sites_sampled", "Sites sampled in the last round")
        self.sites_replied = gauge("ppa_sites_replied", "Sites whose update was aggregated")
        self.sites_failed = gauge("ppa_sites_failed", "Sites that failed or were rejected")
        self.sites_exhausted = gauge(
            "ppa_sites_exhausted", "Sites out of their DP budget (no longer sampled)"
        )
        self.bytes_received = gauge(
            "ppa_round_received_bytes", "Bytes of site updates received in the last round"
        )
        self.bytes_received_total = counter(
            "ppa_received_bytes", "Bytes of site updates received in the run"
        )
        self.site_loss = gauge("ppa_site_train_loss", "Training loss per site", "site")
        self.site_epsilon = gauge("ppa_site_epsilon", "DP epsilon spent per site", "site")
        self.site_flagged = gauge(
            "ppa_site_flagged", "1 when the site's update was flagged", "site"
        )
        self.central_map = gauge(
            "ppa_central_map_ratio", "Central mAP of the global model (0..1)", "protocol"
        )
        self.central_rank1 = gauge(
            "ppa_central_rank1_ratio", "Central Rank-1 of the global model (0..1)", "protocol"
        )
        # The run's counters exist at 0 from the first scrape: a rate over the run is defined
        # from its start, not only once two scrapes happened to fall after the first round.
        for metric in (self.rounds_completed, self.bytes_received_total, self.round_duration):
            metric.labels(**self.run)
        self._per_site = (self.site_loss, self.site_epsilon, self.site_flagged)
        self._sites: set[str] = set()
        self._server = None
        self._thread = None

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port (0 picks a free one)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._server.server_address[1])
        logger.info("Prometheus metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def record_round(
        self,
        server_round: int,
        *,
        seconds: float,
        sampled: int,
        replied: int,
        failed: int,
        bytes_received: int,
        site_metrics: Mapping[str, Mapping[str, float]],
        flagged: Mapping[str, bool],
        exhausted: int = 0,
    ) -> None:
        run = self.run
        self.rounds_completed.labels(**run).inc()
        self.current_round.labels(**run).set(server_round)
        self.round_duration.labels(**run).observe(seconds)
        self.sites_sampled.labels(**run).set(sampled)
        self.sites_replied.labels(**run).set(replied)
        self.sites_failed.labels(**run).set(failed)
        self.sites_exhausted.labels(**run).set(exhausted)
        self.bytes_received.labels(**run).set(bytes_received)
        self.bytes_received_total.labels(**run).inc(bytes_received)
        present = set(site_metrics) | set(flagged)
        for site in self._sites - present:  # left: failed, out of budget, disconnected
            for metric in self._per_site:
                # KeyError: this metric never had the site (e.g. epsilon without DP).
                with contextlib.suppress(KeyError):
                    metric.remove(*run.values(), site)
        self._sites = present
        for site, metrics in site_metrics.items():
            if "loss" in metrics:
                self.site_loss.labels(**run, site=site).set(metrics["loss"])
            if "epsilon" in metrics:
                self.site_epsilon.labels(**run, site=site).set(metrics["epsilon"])
        for site, is_flagged in flagged.items():
            self.site_flagged.labels(**run, site=site).set(1.0 if is_flagged else 0.0)

    def record_evaluation(self, numbers: Mapping[str, Mapping[str, float]]) -> None:
        """`numbers[protocol] = {"mAP": ..., "rank1": ...}` (headline group of each protocol)."""
        for protocol, values in numbers.items():
            self.central_map.labels(**self.run, protocol=protocol).set(values["mAP"])
            self.central_rank1.labels(**self.run, protocol=protocol).set(values["rank1"])
