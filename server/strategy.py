"""ModalityAwareFedAvg: shared parts over all sites, stems/offsets/prototypes per modality.

One concept, a Flower `Strategy` (sampling, reply validation, aggregation, server momentum,
exhausted sites), kept whole: its methods share the round's state and read best together."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ppa.data.records import MODALITIES, Modality
from ppa.wire import (
    ARRAYS,
    BUDGET_EXHAUSTED_CODE,
    CONFIG,
    CONTROL,
    CONTROL_DELTA,
    METRICS,
    NUM_EXAMPLES,
    OFFSET,
    PROTO_COUNT,
    PROTO_SUM,
    PROTOTYPES,
    SERVER_ROUND,
    SHARED,
    SITE,
    SITE_MODALITY,
    SITE_NAME,
    STEM,
    MalformedUpdateError,
    parameter_group,
    validate_prototypes,
    validate_update,
)
from server.aggregation import (
    SITE_WEIGHTS,
    aggregate_updates,
    clip_update,
    rows_by_holders,
    site_weights,
)
from server.anomaly import AnomalyReport, detect_anomalies
from server.control_variates import GlobalControlVariate
from server.drift import DriftReport, client_drift

logger = logging.getLogger(__name__)


class NoSitesLeftError(RuntimeError):
    """Every connected site is out of its DP budget: nothing left to train."""


@dataclass
class SiteReply:
    """One validated training reply."""

    node_id: int
    site: str
    modality: Modality
    arrays: dict[str, np.ndarray]
    num_examples: float
    metrics: dict[str, float]
    proto_sum: np.ndarray | None
    proto_count: np.ndarray | None
    nbytes: int
    control_delta: dict[str, np.ndarray] | None = None  # SCAFFOLD: c_i+ - c_i


@dataclass
class RoundReport:
    """What happened in one round, for the history, logs and telemetry."""

    server_round: int
    sampled: int
    replied: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "node <id>: reason" or "site: reason"
    exhausted: list[str] = field(default_factory=list)  # sites out of DP budget (reasons)
    excluded: int = 0  # connected sites no longer sampled (out of DP budget)
    bytes_received: int = 0
    site_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    anomalies: AnomalyReport | None = None
    drift: DriftReport | None = None
    seconds: float = 0.0


_STATISTICS = ("running_mean", "running_var")


# How the classifier's rows are aggregated: like every shared array (all_sites), or each row
# over the sites holding its identity (holding_sites).
CLASSIFIER_ROWS = ("all_sites", "holding_sites")
CLASSIFIER_KEY = "classifier.weight"


def _is_trainable(name: str) -> bool:
    """Parameters, as opposed to normalisation running statistics."""
    return not name.endswith(_STATISTICS)


class ModalityAwareFedAvg(Strategy):
    """Modality-aware aggregation for the PPA encoder.

    - shared parts (trunk, GeM, BNNeck, classifier): over all sites, with the configured rule
      (weighted FedAvg or a robust rule) after optional per-update norm clipping; the sites
      weighted by their examples or, with ``site_weighting="modality_balanced"``, each
      modality by an equal share;
    - stems and DCMA offsets: weighted mean within each modality;
    - identity prototypes: per-modality sums / counts, so each identity's prototype is the
      mean over every image of that modality that any site saw; with
      ``prototypes_exclude_own`` each site gets them without its own last contribution, so
      its own modality's prototype describes the identity at the other sites' cameras;
    - optionally a server optimiser step on the aggregate (``server_lr``, ``server_momentum``:
      FedAvgM), applied to parameters, not to normalisation statistics;
    - optionally SCAFFOLD's global control variate (``control_keys``): sent with the model,
      updated from the sites' control-variate deltas (server/control_variates.py).
    Replies are validated (names, shapes, dtypes, finite values) and a malformed one is
    dropped with its site named; aggregation is over replies sorted by site name so the
    result does not depend on arrival order.
    """

    def __init__(
        self,
        reference: Mapping[str, torch.Tensor],
        num_classes: int,
        *,
        fraction_train: float = 1.0,
        min_train_nodes: int = 2,
        min_available_nodes: int = 2,
        node_wait_timeout: float = 300.0,
        rule: str = "fedavg",
        trim_fraction: float = 0.2,
        byzantine: int = 1,
        clip_norm: float | None = None,
        anomaly_threshold: float | None = 3.0,
        anomaly_min_spread: float = 0.1,
        exclude_anomalies: bool = False,
        drift_min_cosine: float | None = None,
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        control_keys: list[str] | None = None,
        prototypes_exclude_own: bool = False,
        classifier_rows: str = "all_sites",
        site_weighting: str = "examples",
        round_lr: Callable[[int], float] | None = None,
        seed: int = 0,
    ):
        # The current global arrays: the validation reference and the clipping anchor.
        self.current = {k: v.detach().cpu().numpy() for k, v in reference.items()}
        self.num_classes = num_classes
        self.dim = int(
            next(v for k, v in self.current.items() if parameter_group(k).kind == OFFSET).size
        )
        self.fraction_train = fraction_train
        self.min_train_nodes = min_train_nodes
        self.min_available_nodes = min_available_nodes
        self.node_wait_timeout = node_wait_timeout
        self.rule = rule
        self.trim_fraction = trim_fraction
        self.byzantine = byzantine
        self.clip_norm = clip_norm
        self.anomaly_threshold = anomaly_threshold
        self.anomaly_min_spread = anomaly_min_spread
        self.exclude_anomalies = exclude_anomalies
        self.drift_min_cosine = drift_min_cosine
        if anomaly_min_spread < 0:
            raise ValueError(
                f"aggregation.anomaly_min_spread must be >= 0, got {anomaly_min_spread}"
            )
        if server_lr <= 0 or not 0.0 <= server_momentum < 1.0:
            raise ValueError(
                f"server_lr must be > 0 and server_momentum in [0, 1), got {server_lr}, "
                f"{server_momentum}"
            )
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        # FedAvgM: the server's momentum buffer of the aggregated update, per array.
        self.velocity: dict[str, np.ndarray] = {}
        # The sites' learning-rate factor of a round (None: the velocity is never rescaled),
        # and the round the velocity was last updated in.
        self.round_lr = round_lr
        self.velocity_round: int | None = None
        self.rng = random.Random(seed)
        # SCAFFOLD (server/control_variates.py) over these trainable parameters; None: off.
        self.control = (
            GlobalControlVariate(self.current, control_keys) if control_keys is not None else None
        )
        self.proto_sums = np.zeros((len(MODALITIES), num_classes, self.dim), np.float64)
        self.proto_counts = np.zeros((len(MODALITIES), num_classes), np.float64)
        self.prototypes_exclude_own = prototypes_exclude_own
        if classifier_rows not in CLASSIFIER_ROWS:
            raise ValueError(
                f"federation.aggregation.classifier_rows must be one of {CLASSIFIER_ROWS}, "
                f"got {classifier_rows!r}"
            )
        if classifier_rows == "holding_sites" and rule != "fedavg":
            raise ValueError(
                "federation.aggregation.classifier_rows=holding_sites is a weighted mean; "
                f"it does not combine with rule={rule!r}"
            )
        if classifier_rows == "holding_sites" and CLASSIFIER_KEY not in self.current:
            raise ValueError(f"classifier_rows=holding_sites: the model has no {CLASSIFIER_KEY!r}")
        self.classifier_rows = classifier_rows
        if site_weighting not in SITE_WEIGHTS:
            raise ValueError(
                f"federation.aggregation.site_weighting must be one of {SITE_WEIGHTS}, "
                f"got {site_weighting!r}"
            )
        self.site_weighting = site_weighting
        # node -> (modality index, sums, counts) of the node's reply that is part of the
        # current global prototypes (what `prototypes_exclude_own` takes out again).
        self.proto_contributions: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        self.last_report: RoundReport | None = None
        self._sampled: dict[int, int] = {}
        self._excluded: dict[int, int] = {}
        # Nodes that reported an exhausted DP budget: never sampled again in this run.
        self.exhausted_nodes: set[int] = set()

    # Checkpointable state ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "rng": self.rng.getstate(),
            "proto_sums": self.proto_sums.copy(),
            "proto_counts": self.proto_counts.copy(),
            "proto_contributions": {
                n: (m, s.copy(), c.copy()) for n, (m, s, c) in self.proto_contributions.items()
            },
            "exhausted_nodes": sorted(self.exhausted_nodes),
            "velocity": {k: v.copy() for k, v in self.velocity.items()},
            "velocity_round": self.velocity_round,
            "control": self.control.state_dict() if self.control is not None else None,
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.rng.setstate(state["rng"])
        self.proto_sums = np.asarray(state["proto_sums"], np.float64).copy()
        self.proto_counts = np.asarray(state["proto_counts"], np.float64).copy()
        self.proto_contributions = {
            int(n): (int(m), np.asarray(s, np.float64).copy(), np.asarray(c, np.float64).copy())
            for n, (m, s, c) in state.get("proto_contributions", {}).items()
        }
        self.exhausted_nodes = set(state.get("exhausted_nodes", []))
        self.velocity = {k: np.asarray(v).copy() for k, v in state.get("velocity", {}).items()}
        self.velocity_round = state.get("velocity_round")
        if self.control is not None and state.get("control") is not None:
            self.control.load_state_dict(state["control"])

    def prototype_record(self, node: int | None = None) -> ArrayRecord:
        """The global prototypes as sent to sites: per-modality sums and counts; for `node`
        with ``prototypes_exclude_own``, without that node's own contribution."""
        sums, counts = self.proto_sums, self.proto_counts
        if self.prototypes_exclude_own and node in self.proto_contributions:
            m, own_sum, own_count = self.proto_contributions[node]
            sums, counts = sums.copy(), counts.copy()
            counts[m] = np.maximum(counts[m] - own_count, 0.0)
            # An identity only this node saw has no prototype left (sum and count zero).
            sums[m] = np.where(counts[m][:, None] > 0, sums[m] - own_sum, 0.0)
        arrays = {}
        for m in MODALITIES:
            arrays[f"{PROTO_SUM}.{m.value}"] = sums[m.index].astype(np.float32)
            arrays[f"{PROTO_COUNT}.{m.value}"] = counts[m.index].astype(np.float32)
        return ArrayRecord({k: Array(v) for k, v in arrays.items()})

    # Strategy interface ----------------------------------------------------------------------
    def summary(self) -> None:
        logger.info(
            "ModalityAwareFedAvg: rule=%s clip_norm=%s fraction=%.2f min_nodes=%d",
            self.rule,
            self.clip_norm,
            self.fraction_train,
            self.min_train_nodes,
        )

    def sample(self, grid: Grid) -> list[int]:
        """Wait (bounded) for enough nodes, then sample a fraction with the strategy's RNG.

        Sites out of DP budget are not sampled; NoSitesLeftError when none is left.
        """
        deadline = time.monotonic() + self.node_wait_timeout
        need = max(self.min_available_nodes, self.min_train_nodes)
        while len(nodes := sorted(grid.get_node_ids())) < need:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(nodes)} site(s) connected after {self.node_wait_timeout:.0f}s; "
                    f"federation.min_available_sites={need}"
                )
            time.sleep(1.0)
        candidates = [n for n in nodes if n not in self.exhausted_nodes]
        if not candidates:
            raise NoSitesLeftError(
                f"all {len(nodes)} connected site(s) have exhausted their DP budget"
            )
        size = min(
            len(candidates), max(int(len(candidates) * self.fraction_train), self.min_train_nodes)
        )
        return sorted(self.rng.sample(candidates, size))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self.sample(grid)
        self._excluded[server_round] = len(self.exhausted_nodes)
        self.current = {k: v.numpy() for k, v in arrays.items()}
        config[SERVER_ROUND] = server_round
        content = RecordDict({ARRAYS: arrays, CONFIG: config, PROTOTYPES: self.prototype_record()})
        if self.control is not None:
            content[CONTROL] = ArrayRecord({k: Array(v) for k, v in self.control.arrays().items()})
        self._sampled[server_round] = len(nodes)
        logger.info("round %d: sampled %d site(s)", server_round, len(nodes))
        messages = []
        for n in nodes:
            own = content
            if self.prototypes_exclude_own and n in self.proto_contributions:
                own = RecordDict(dict(content.items()))  # the same arrays, its own prototypes
                own[PROTOTYPES] = self.prototype_record(n)
            messages.append(Message(content=own, message_type=MessageType.TRAIN, dst_node_id=n))
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # Evaluation is central (server/evaluation.py): the test protocols need the whole
        # query/gallery, which no single site holds.
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None

    def _parse(self, msg: Message) -> SiteReply:
        node = msg.metadata.src_node_id
        content = msg.content
        if SITE not in content.config_records or ARRAYS not in content.array_records:
            raise MalformedUpdateError(f"node {node}: reply lacks '{SITE}' or '{ARRAYS}'")
        site_info = content.config_records[SITE]
        site = str(site_info.get(SITE_NAME, f"node-{node}"))
        modality = Modality.parse(str(site_info.get(SITE_MODALITY, "")))
        record = content.array_records[ARRAYS]
        arrays = {k: v.numpy() for k, v in record.items()}
        validate_update(arrays, self.current, modality, site)
        metrics = dict(content.metric_records.get(METRICS, MetricRecord()))
        num_examples = float(metrics.get(NUM_EXAMPLES, 0.0))
        if not np.isfinite(num_examples) or num_examples <= 0:
            raise MalformedUpdateError(f"site {site!r}: num-examples={num_examples}")
        proto_sum = proto_count = None
        nbytes = record.count_bytes()
        if PROTOTYPES in content.array_records:
            protos = content.array_records[PROTOTYPES]
            proto_sum = protos[PROTO_SUM].numpy().astype(np.float64)
            proto_count = protos[PROTO_COUNT].numpy().astype(np.float64)
            validate_prototypes(proto_sum, proto_count, self.num_classes, self.dim, site)
            nbytes += protos.count_bytes()
        control_delta = None
        if self.control is not None:
            if CONTROL_DELTA not in content.array_records:
                raise MalformedUpdateError(
                    f"site {site!r}: federation.scaffold is on but the reply has no "
                    f"'{CONTROL_DELTA}'"
                )
            deltas = content.array_records[CONTROL_DELTA]
            control_delta = {k: v.numpy() for k, v in deltas.items()}
            self.control.validate(control_delta, list(arrays), site)
            nbytes += deltas.count_bytes()
        return SiteReply(
            node,
            site,
            modality,
            arrays,
            num_examples,
            {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
            proto_sum,
            proto_count,
            nbytes,
            control_delta,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        start = time.perf_counter()
        report = RoundReport(
            server_round,
            sampled=self._sampled.get(server_round, 0),
            excluded=self._excluded.get(server_round, 0),
        )
        parsed: list[SiteReply] = []
        for msg in replies:
            if msg.has_error():
                node = msg.metadata.src_node_id
                if msg.error.code == BUDGET_EXHAUSTED_CODE:
                    self.exhausted_nodes.add(node)
                    report.exhausted.append(f"node {node}: {msg.error.reason}")
                else:
                    report.failed.append(f"node {node}: {msg.error.reason}")
                continue
            try:
                parsed.append(self._parse(msg))
            except (MalformedUpdateError, ValueError, KeyError, TypeError) as err:
                report.failed.append(str(err))
        missing = report.sampled - len(parsed) - len(report.failed) - len(report.exhausted)
        if missing > 0:
            report.failed.append(f"{missing} site(s) did not reply before the round timeout")
        for reason in report.failed:
            logger.warning("round %d: dropped %s", server_round, reason)
        for reason in report.exhausted:
            logger.warning(
                "round %d: out of DP budget, no longer sampled: %s", server_round, reason
            )
        parsed.sort(key=lambda r: (r.site, r.node_id))
        report.replied = [r.site for r in parsed]
        report.bytes_received = sum(r.nbytes for r in parsed)
        report.site_metrics = {r.site: r.metrics for r in parsed}
        self.last_report = report
        if not parsed:
            logger.error("round %d: no usable reply; the global model is unchanged", server_round)
            report.seconds = time.perf_counter() - start
            return None, None

        current = self.current
        shared_keys = [k for k in parsed[0].arrays if parameter_group(k).kind == SHARED]
        report.anomalies = detect_anomalies(
            [r.site for r in parsed],
            [r.arrays for r in parsed],
            current,
            shared_keys,
            threshold=self.anomaly_threshold,
            min_spread=self.anomaly_min_spread,
        )
        report.drift = self._drift(parsed, shared_keys)
        if self.drift_min_cosine is not None and len(parsed) >= 3:
            for site, values in report.drift.sites.items():
                report.anomalies.scores[site]["drift_cosine"] = float(values["cosine"])
                if (
                    values["cosine"] < self.drift_min_cosine
                    and site not in report.anomalies.flagged
                ):
                    report.anomalies.flagged.append(site)
        voters = parsed
        if self.exclude_anomalies and report.anomalies.flagged:
            voters = [r for r in parsed if r.site not in report.anomalies.flagged] or parsed
        if self.clip_norm:
            # Each update is clipped as a whole (shared parts + its stem and offset).
            for r in voters:
                r.arrays = clip_update(r.arrays, current, list(r.arrays), self.clip_norm)

        new = dict(current)
        aggregated = set(shared_keys)
        new.update(
            aggregate_updates(
                [r.arrays for r in voters],
                self._shared_weights(voters),
                shared_keys,
                self.rule,
                trim_fraction=self.trim_fraction,
                byzantine=self.byzantine,
            )
        )
        for modality in MODALITIES:
            group = [r for r in voters if r.modality == modality]
            if not group:
                continue  # no site of this modality this round: its stem/offset stay
            keys = [
                k
                for k in group[0].arrays
                if parameter_group(k).kind in (STEM, OFFSET)
                and parameter_group(k).modality == modality
            ]
            aggregated.update(keys)
            # The same rule within the modality (it reduces to the weighted mean below three
            # sites of that modality).
            new.update(
                aggregate_updates(
                    [r.arrays for r in group],
                    [r.num_examples for r in group],
                    keys,
                    self.rule,
                    trim_fraction=self.trim_fraction,
                    byzantine=self.byzantine,
                )
            )
        if self.classifier_rows == "holding_sites":
            new[CLASSIFIER_KEY] = self._classifier_by_holders(voters)
        self._aggregate_prototypes(voters)
        if self.control is not None:
            self.control.update(
                [r.site for r in voters],
                [r.control_delta for r in voters],
                [r.num_examples for r in voters],
            )
        new = self._server_step(new, sorted(aggregated), server_round)
        new = {k: np.asarray(v, dtype=current[k].dtype) for k, v in new.items()}
        self.current = new
        report.seconds = time.perf_counter() - start
        record = ArrayRecord({k: Array(v) for k, v in new.items()})
        return record, self._aggregate_metrics(voters)

    def _shared_weights(self, replies: list[SiteReply]) -> list[float]:
        """The replies' weights in the shared parts' mean (``site_weighting``)."""
        return site_weights(
            [r.num_examples for r in replies],
            [r.modality.value for r in replies],
            self.site_weighting,
        )

    def _classifier_by_holders(self, voters: list[SiteReply]) -> np.ndarray:
        """The classifier's rows, each over the sites that hold its identity (their prototype
        counts of it as weights): a site's row of an identity it never saw only carries the
        softmax's push away from its own images."""
        missing = [r.site for r in voters if r.proto_count is None]
        if missing:
            raise MalformedUpdateError(
                "federation.aggregation.classifier_rows=holding_sites needs every site's "
                f"prototype counts; none from {', '.join(missing)}"
            )
        return rows_by_holders(
            self.current[CLASSIFIER_KEY],
            [r.arrays[CLASSIFIER_KEY] for r in voters],
            [r.proto_count for r in voters],
        )

    def _drift(self, replies: list[SiteReply], shared_keys: list[str]) -> DriftReport:
        """Each reply's drift against the aggregate of all replies (server/drift.py): the shared
        parts over every site with the round's site weights, stems and offsets within each
        modality."""
        aggregate = aggregate_updates(
            [r.arrays for r in replies], self._shared_weights(replies), shared_keys
        )
        stem_keys: dict[str, list[str]] = {}
        for modality in MODALITIES:
            group = [r for r in replies if r.modality == modality]
            if not group:
                continue
            keys = [
                k
                for k in group[0].arrays
                if parameter_group(k).kind in (STEM, OFFSET)
                and parameter_group(k).modality == modality
            ]
            stem_keys[modality.value] = keys
            aggregate.update(
                aggregate_updates([r.arrays for r in group], [r.num_examples for r in group], keys)
            )
        return client_drift(
            [r.site for r in replies],
            [r.modality.value for r in replies],
            [r.arrays for r in replies],
            self.current,
            aggregate,
            shared_keys,
            stem_keys,
        )

    def _server_step(
        self, new: dict[str, np.ndarray], keys: list[str], server_round: int
    ) -> dict[str, np.ndarray]:
        """FedAvgM (Hsu et al., 2019): treat the aggregated change as a pseudo-gradient,
        ``v <- beta v + (aggregate - current)``, ``global <- current + server_lr * v``.

        One aggregate is one optimiser step, however many local steps the sites took, so
        with many sites in parallel a federated run takes far fewer sequential steps than
        central training over the same epochs; server momentum recovers part of that.
        Normalisation statistics are averaged, never extrapolated. Keys no site updated this
        round (a modality without a site) keep their value and their velocity.

        With `round_lr` the velocity is first scaled by the ratio of this round's learning
        rate to that of the round it was last updated in, ``beta v lr_t / lr_s``: the velocity
        is a sum of parameter changes, each already scaled by its round's rate, so without
        this a step decay of the sites' schedule would keep moving the model by the old
        rate's changes for several rounds (SGD's momentum buffer holds gradients, and the new
        rate applies to it at once).
        """
        if self.server_lr == 1.0 and self.server_momentum == 0.0:
            return new
        decay = self.server_momentum
        if self.round_lr is not None and self.velocity_round is not None:
            decay *= self.round_lr(server_round) / self.round_lr(self.velocity_round)
        self.velocity_round = server_round
        out = dict(new)
        for k in keys:
            if not _is_trainable(k) or not np.issubdtype(self.current[k].dtype, np.floating):
                continue
            base = np.asarray(self.current[k], np.float64)
            delta = np.asarray(new[k], np.float64) - base
            velocity = decay * self.velocity.get(k, 0.0) + delta
            self.velocity[k] = velocity.astype(np.float32)
            out[k] = base + self.server_lr * velocity
        return out

    def _aggregate_prototypes(self, replies: list[SiteReply]) -> None:
        with_protos = [r for r in replies if r.proto_sum is not None]
        if not with_protos:
            return
        sums = np.zeros_like(self.proto_sums)
        counts = np.zeros_like(self.proto_counts)
        for r in with_protos:
            sums[r.modality.index] += r.proto_sum
            counts[r.modality.index] += r.proto_count
        # A modality no site reported this round keeps last round's prototypes.
        for m in MODALITIES:
            if counts[m.index].sum() > 0:
                self.proto_sums[m.index] = sums[m.index]
                self.proto_counts[m.index] = counts[m.index]
                # The global prototypes of m are now exactly this round's replies of m.
                self.proto_contributions = {
                    n: c for n, c in self.proto_contributions.items() if c[0] != m.index
                }
                for r in with_protos:
                    if r.modality == m:
                        self.proto_contributions[r.node_id] = (m.index, r.proto_sum, r.proto_count)

    @staticmethod
    def _aggregate_metrics(replies: list[SiteReply]) -> MetricRecord:
        total = sum(r.num_examples for r in replies)
        keys = sorted({k for r in replies for k in r.metrics if k != NUM_EXAMPLES})
        out: dict[str, float] = {NUM_EXAMPLES: float(total)}
        for k in keys:
            vals = [(r.metrics[k], r.num_examples) for r in replies if k in r.metrics]
            weight = sum(w for _, w in vals)
            out[k] = float(sum(v * w for v, w in vals) / weight) if weight else 0.0
        return MetricRecord(out)
