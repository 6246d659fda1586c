"""Prometheus metrics of a federated run, served over HTTP by the ServerApp."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

logger = logging.getLogger(__name__)


class Telemetry:
    """The run's metrics on a private registry (several runs in one process don't collide).

    `serve()` starts prometheus-client's HTTP endpoint on host:port; `close()` stops it.
    """

    def __init__(self, run_name: str = "ppa"):
        self.registry = CollectorRegistry()
        labels = {"registry": self.registry}
        self.rounds_completed = Counter(
            "ppa_rounds_completed", "Federated rounds completed", **labels
        )
        self.current_round = Gauge("ppa_current_round", "Last completed round", **labels)
        self.round_duration = Gauge(
            "ppa_round_duration_seconds", "Wall time of the last round", **labels
        )
        self.sites_sampled = Gauge("ppa_sites_sampled", "Sites sampled in the last round", **labels)
        self.sites_replied = Gauge(
            "ppa_sites_replied", "Sites whose update was aggregated", **labels
        )
        self.sites_failed = Gauge(
            "ppa_sites_failed", "Sites that failed or were rejected", **labels
        )
        self.sites_exhausted = Gauge(
            "ppa_sites_exhausted", "Sites out of their DP budget (no longer sampled)", **labels
        )
        self.bytes_received = Gauge(
            "ppa_round_received_bytes", "Bytes of site updates received in the last round", **labels
        )
        self.bytes_received_total = Counter(
            "ppa_received_bytes", "Bytes of site updates received in the run", **labels
        )
        self.site_loss = Gauge("ppa_site_train_loss", "Training loss per site", ["site"], **labels)
        self.site_epsilon = Gauge(
            "ppa_site_epsilon", "DP epsilon spent per site", ["site"], **labels
        )
        self.site_flagged = Gauge(
            "ppa_site_flagged", "1 when the site's update was flagged", ["site"], **labels
        )
        self.central_map = Gauge(
            "ppa_central_map", "Central mAP of the global model", ["protocol"], **labels
        )
        self.central_rank1 = Gauge(
            "ppa_central_rank1", "Central Rank-1 of the global model", ["protocol"], **labels
        )
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
        self.rounds_completed.inc()
        self.current_round.set(server_round)
        self.round_duration.set(seconds)
        self.sites_sampled.set(sampled)
        self.sites_replied.set(replied)
        self.sites_failed.set(failed)
        self.sites_exhausted.set(exhausted)
        self.bytes_received.set(bytes_received)
        self.bytes_received_total.inc(bytes_received)
        for site, metrics in site_metrics.items():
            if "loss" in metrics:
                self.site_loss.labels(site=site).set(metrics["loss"])
            if "epsilon" in metrics:
                self.site_epsilon.labels(site=site).set(metrics["epsilon"])
        for site, is_flagged in flagged.items():
            self.site_flagged.labels(site=site).set(1.0 if is_flagged else 0.0)

    def record_evaluation(self, numbers: Mapping[str, Mapping[str, float]]) -> None:
        """`numbers[protocol] = {"mAP": ..., "rank1": ...}` (headline group of each protocol)."""
        for protocol, values in numbers.items():
            self.central_map.labels(protocol=protocol).set(values["mAP"])
            self.central_rank1.labels(protocol=protocol).set(values["rank1"])
