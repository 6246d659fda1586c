"""The federated round loop: sample, train, aggregate, evaluate, checkpoint, export.

Flower's `Strategy.start` runs a fixed loop; ours adds what a long run needs between rounds
(central evaluation every N rounds, atomic checkpoints, resume, telemetry), so the loop
lives here and the strategy only configures and aggregates.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from omegaconf import DictConfig, OmegaConf

from ppa.checkpoint import save_checkpoint
from ppa.data.protocols import load_label_space
from ppa.device import DeviceSettings
from ppa.eval.camera_statistics import camera_statistics_source
from ppa.io import atomic_write_json
from ppa.model import PPAEncoder, create_model
from ppa.model.norm_statistics import calibration_mode, norm_statistics_keys
from ppa.public_start import check_public_start
from ppa.run_dir import claim_run_dir
from ppa.seeding import seed_everything
from ppa.training.loop import federated_train_config, round_lr_factor
from ppa.training.scaffold import control_keys
from ppa.wire import (
    HALF_PRECISION,
    LOCAL_EPOCHS,
    check_federated_anonymizer,
    check_global,
    global_keys,
    pack,
    unpack_into,
)
from server.calibration import NormCalibration
from server.checkpoints import CheckpointStore, ServerCheckpoint, capture_rng, restore_rng
from server.drift import DriftGauges, plot_drift
from server.evaluation import CentralEvaluator, MetricsHistory
from server.progress import RoundProgress
from server.round_outcome import require_usable_update
from server.strategy import ModalityAwareFedAvg, NoSitesLeftError, RoundReport
from server.telemetry import DEFAULT_ROUND_BUCKETS, Telemetry

logger = logging.getLogger(__name__)


def build_strategy(cfg: DictConfig, model: PPAEncoder) -> ModalityAwareFedAvg:
    fed = cfg.federation
    agg = fed.aggregation
    classifier_rows = str(agg.get("classifier_rows", "all_sites"))
    if classifier_rows == "holding_sites" and not fed.get("prototypes", True):
        raise ValueError(
            "federation.aggregation.classifier_rows=holding_sites weights each identity's row "
            "by the sites' prototype counts; it needs federation.prototypes=true"
        )
    state = model.state_dict()
    return ModalityAwareFedAvg(
        {k: state[k] for k in global_keys(state)},
        model.num_classes,
        fraction_train=float(fed.fraction_train),
        min_train_nodes=int(fed.min_train_sites),
        min_available_nodes=int(fed.min_available_sites),
        node_wait_timeout=float(fed.node_wait_timeout),
        rule=str(agg.rule),
        trim_fraction=float(agg.trim_fraction),
        byzantine=int(agg.krum_byzantine),
        clip_norm=float(agg.clip_norm) if agg.clip_norm else None,
        anomaly_threshold=float(agg.anomaly_threshold) if agg.anomaly_threshold else None,
        anomaly_min_spread=float(agg.anomaly_min_spread),
        exclude_anomalies=bool(agg.exclude_anomalies),
        drift_min_cosine=(
            float(agg.drift_min_cosine) if agg.get("drift_min_cosine") is not None else None
        ),
        server_lr=float(agg.server_lr),
        server_momentum=float(agg.server_momentum),
        control_keys=scaffold_keys(cfg, model),
        prototypes_exclude_own=bool(fed.get("prototypes_exclude_own", False)),
        classifier_rows=classifier_rows,
        site_weighting=str(agg.get("site_weighting", "examples")),
        round_lr=(
            partial(
                round_lr_factor,
                local_epochs=int(fed.local_epochs),
                train_cfg=federated_train_config(cfg).train,
            )
            if agg.get("momentum_follows_lr", False)
            else None
        ),
        seed=int(cfg.seed),
    )


def scaffold_keys(cfg: DictConfig, model: PPAEncoder) -> list[str] | None:
    """The parameters SCAFFOLD's control variates cover (`federation.scaffold`), or None.

    Refused under DP: a control-variate delta is computed from the site's private update
    outside the DP-SGD release.
    """
    if not cfg.federation.get("scaffold", False):
        return None
    if cfg.privacy.get("enabled", False):
        raise ValueError(
            "federation.scaffold=true with privacy.enabled: the control-variate deltas are not "
            "covered by the DP guarantee; turn one of them off"
        )
    state = model.state_dict()
    return control_keys(model, global_keys(state))


class FederatedRun:
    """One federated training run of the PPA model (docs/architecture.md, "Federation")."""

    def __init__(self, cfg: DictConfig, *, resume: bool = False, run_id: str = ""):
        self.cfg = cfg
        check_federated_anonymizer(cfg)
        # A bad federation.lr_gamma, warmup_epochs or amp stops the run before any site starts.
        federation_cfg = federated_train_config(cfg)
        self.run_id = run_id  # Flower's run id: labels the Prometheus series
        # A folder of this run's own (ppa/run_dir.py); resume continues the newest earlier run.
        self.out = claim_run_dir(cfg, resume=resume)
        logger.info("run %s: results in %s", cfg.run_name, self.out)
        seed_everything(int(cfg.seed), bool(cfg.deterministic))
        # The central evaluation runs at the federation's precision (federation.amp).
        self.device = DeviceSettings.from_config(federation_cfg)
        # The label space comes from the split files; the server needs no training images.
        num_classes = len(load_label_space(cfg.dataset))
        # A public start must not have seen any training or test identity of this run.
        check_public_start(cfg)
        self.model = create_model(cfg.model, num_classes)
        self.device.place(self.model)
        state = self.model.state_dict()
        self.arrays = pack(state, global_keys(state))
        self.strategy = build_strategy(cfg, self.model)
        # The statistics round (server/calibration.py); a GroupNorm model has nothing to measure.
        # Under DP there is none: the statistics of raw images are outside the guarantee (a DP
        # model's BatchNorm, if any, is frozen at the public start's statistics).
        stats_keys = norm_statistics_keys(self.model)
        self.calibration = (
            NormCalibration(stats_keys, int(cfg.federation.calibration_images))
            if cfg.federation.calibrate_norm_statistics
            and stats_keys
            and not cfg.privacy.get("enabled", False)
            else None
        )
        # eval.camera_statistics=training: each camera's statistics from the statistics round of
        # the evaluated round (server/calibration.py), measured as training normalised.
        self.camera_statistics: dict[int, dict[str, np.ndarray]] = {}
        self.camera_statistics_round = -1
        training_mode_round = self.calibration is not None and calibration_mode(cfg) == "train"
        source = camera_statistics_source(cfg, training_mode_statistics_round=training_mode_round)
        if cfg.eval.get("camera_statistics") == "auto":  # the central evaluation reads it
            cfg = self.cfg = OmegaConf.merge(cfg, {"eval": {"camera_statistics": source}})
        if source == "training" and not training_mode_round:
            raise ValueError(
                "eval.camera_statistics=training takes each camera's statistics from the "
                "statistics round in training mode: it needs federation.calibrate_norm_statistics"
                "=true, a BatchNorm model without DP, and federation.calibration_mode=train (or "
                f"auto with model.trunk_stats=modality); got {calibration_mode(cfg)}"
            )
        self.store = CheckpointStore(
            self.out / "checkpoints", keep=int(cfg.federation.keep_checkpoints)
        )
        self.history = MetricsHistory()
        self.evaluator = CentralEvaluator(cfg, self.device, list(cfg.federation.eval_protocols))
        self.telemetry: Telemetry | None = None
        self.drift_gauges: DriftGauges | None = None
        self.start_round = 1
        if resume:
            self._resume()
        self.progress = RoundProgress(int(cfg.federation.rounds), self.start_round)

    # State --------------------------------------------------------------------------------
    def _resume(self) -> None:
        ckpt = self.store.load_latest()
        if ckpt is None:
            logger.warning(
                "resume=true but no checkpoint in %s: starting from round 1", self.store.directory
            )
            return
        if set(ckpt.arrays) != set(self.arrays):
            raise ValueError(
                f"checkpoint in {self.store.directory} belongs to another model "
                "(array names differ)"
            )
        shapes = [
            f"{k}: {np.shape(v)} vs {np.shape(self.arrays[k])}"
            for k, v in ckpt.arrays.items()
            if np.shape(v) != np.shape(self.arrays[k])
        ]
        if shapes:
            raise ValueError(
                f"checkpoint in {self.store.directory} belongs to another model (array shapes "
                f"differ: {shapes[:3]})"
            )
        self.arrays = {k: np.asarray(v) for k, v in ckpt.arrays.items()}
        self.strategy.load_state_dict(ckpt.strategy)
        self.history = MetricsHistory(ckpt.history)
        restore_rng(ckpt.rng)
        self.start_round = ckpt.server_round + 1

    def global_model(self) -> PPAEncoder:
        """The model holding the current global arrays."""
        self.model.load_state_dict(unpack_into(self.model.state_dict(), self.arrays))
        return self.model

    # The loop -----------------------------------------------------------------------------
    def run(self, grid: Grid) -> MetricsHistory:
        fed = self.cfg.federation
        rounds = int(fed.rounds)
        if self.cfg.telemetry.enabled:
            self.telemetry = Telemetry(
                str(self.cfg.run_name),
                self.run_id,
                list(self.cfg.telemetry.get("round_duration_buckets") or DEFAULT_ROUND_BUCKETS),
            )
            self.telemetry.serve(str(self.cfg.telemetry.host), int(self.cfg.telemetry.port))
        try:
            if self.start_round == 1 and fed.evaluate_initial and not self.history.records:
                self._evaluate_and_record(0, {"round": 0})
            self.progress = RoundProgress(rounds, self.start_round)  # times training rounds
            for server_round in range(self.start_round, rounds + 1):
                try:
                    self._round(grid, server_round, rounds)
                except NoSitesLeftError as err:
                    logger.warning("stopping before round %d: %s", server_round, err)
                    break
        finally:
            if self.telemetry is not None:
                self.telemetry.close()
        self._plot()  # the last round's, also when the run stopped early
        self._log_table()
        return self.history

    def _round(self, grid: Grid, server_round: int, rounds: int) -> None:
        fed = self.cfg.federation
        start = time.perf_counter()
        config = ConfigRecord(
            {LOCAL_EPOCHS: int(fed.local_epochs), HALF_PRECISION: bool(fed.half_precision)}
        )
        global_record = ArrayRecord({k: Array(v) for k, v in self.arrays.items()})
        messages = self.strategy.configure_train(server_round, global_record, config, grid)
        replies = grid.send_and_receive(messages, timeout=float(fed.round_timeout))
        aggregated, metrics = self.strategy.aggregate_train(server_round, replies)
        report = self.strategy.last_report or RoundReport(server_round, sampled=0)
        require_usable_update(report, rounds)  # a round without one is no round
        if aggregated is not None:
            candidate = {k: v.numpy() for k, v in aggregated.items()}
            problems = check_global(candidate)
            if problems:
                # A poisoned aggregate must never become the global model: keep the previous
                # one, tell the strategy, and record why.
                logger.error(
                    "round %d: aggregate rejected (%s); keeping the previous model",
                    server_round,
                    "; ".join(problems[:3]),
                )
                report.failed.append(f"aggregate rejected: {'; '.join(problems[:3])}")
                self.strategy.current = dict(self.arrays)
            else:
                self.arrays = candidate
        evaluating = server_round % int(fed.evaluate_every) == 0 or server_round == rounds
        # The statistics round has its own cadence (default: the evaluation's), so how often
        # the server evaluates does not change the model it trains.
        calibrating = server_round % int(fed.calibrate_every) == 0 or server_round == rounds
        calibration = None
        if calibrating and self.calibration is not None and aggregated is not None:
            calibration = self._calibrate(grid, server_round)
        record = {
            "round": server_round,
            "train": dict(metrics) if metrics is not None else {},
            "sites": report.site_metrics,
            "replied": report.replied,
            "failed": report.failed,
            "exhausted": report.exhausted,
            "excluded": report.excluded,
            "bytes_received": report.bytes_received,
            "anomalies": report.anomalies.scores if report.anomalies else {},
            "flagged": report.anomalies.flagged if report.anomalies else [],
        }
        if report.drift is not None:
            record["drift"] = report.drift.as_record()
            logger.info("round %d client drift: %s", server_round, report.drift.summary())
        if calibration is not None:
            record["calibration"] = calibration
        if evaluating:
            self._evaluate_and_record(server_round, record)
        else:
            self.history.append(record)
        record["seconds"] = time.perf_counter() - start
        self._export(server_round, record, report)
        if evaluating and server_round < rounds:
            # Redrawn with each central evaluation (and by `run` at the end), not every round:
            # two figures cost about 0.3 s of the server's time, all of it while the sites wait.
            self._plot()

    def _calibrate(self, grid: Grid, server_round: int) -> dict:
        """The statistics round: the sites re-measure the new global model's BatchNorm
        statistics, which replace the averaged ones (ppa/model/norm_statistics.py says why)."""
        assert self.calibration is not None
        nodes = [n for n in sorted(grid.get_node_ids()) if n not in self.strategy.exhausted_nodes]
        messages = self.calibration.messages(server_round, self.arrays, nodes)
        replies = grid.send_and_receive(messages, timeout=float(self.cfg.federation.round_timeout))
        result = self.calibration.combine(replies, self.arrays)
        self.camera_statistics, self.camera_statistics_round = result.per_camera, server_round
        if result.statistics:
            # The next round's configure_train hands these arrays to the strategy.
            self.arrays.update(
                {k: v.astype(self.arrays[k].dtype) for k, v in result.statistics.items()}
            )
        logger.info(
            "round %d statistics round: %d site(s), %d images, %d failed",
            server_round,
            len(result.sites),
            result.images,
            len(result.failed),
        )
        return result.summary()

    def _evaluate_and_record(self, server_round: int, record: dict) -> None:
        # Only statistics of this round's model describe it (none at round 0 or after a resume:
        # every camera keeps the model's own then).
        current = server_round == self.camera_statistics_round
        evaluation = self.evaluator(
            self.global_model(), camera_statistics=self.camera_statistics if current else {}
        )
        record["central"] = evaluation.headlines()
        eval_dir = self.out / "evaluation"
        eval_dir.mkdir(exist_ok=True)
        round_file = eval_dir / f"round_{server_round:04d}.json"
        atomic_write_json(round_file, evaluation.to_json(), indent=2)
        self.history.append(record)
        numbers = " | ".join(
            f"{p}: mAP {100 * v['mAP']:.2f} R1 {100 * v['rank1']:.2f}"
            for p, v in record["central"].items()
        )
        logger.info("round %d central evaluation: %s", server_round, numbers)
        if self.telemetry is not None:
            self.telemetry.record_evaluation(record["central"])
        if server_round == 0:
            self.history.save(self.out / "history.json")

    def _plot(self) -> None:
        self.history.plot(self.out / "history.png", title=f"{self.cfg.run_name}")
        plot_drift(self.history.records, self.out / "drift.png", title=f"{self.cfg.run_name}")

    def _export(self, server_round: int, record: dict, report: RoundReport) -> None:
        self.history.save(self.out / "history.json")
        self.store.save(
            ServerCheckpoint(
                server_round=server_round,
                arrays=self.arrays,
                strategy=self.strategy.state_dict(),
                history=self.history.records,
                rng=capture_rng(),
                config=OmegaConf.to_container(self.cfg, resolve=True),
            )
        )
        save_checkpoint(
            self.out / "model_latest.pt", self.global_model(), self.cfg, server_round=server_round
        )
        if self.telemetry is not None:
            flagged = report.anomalies.flagged if report.anomalies else []
            self.telemetry.record_round(
                server_round,
                seconds=record["seconds"],
                sampled=report.sampled,
                replied=len(report.replied),
                failed=len(report.failed),
                bytes_received=report.bytes_received,
                site_metrics=report.site_metrics,
                flagged={s: s in flagged for s in report.replied},
                exhausted=report.excluded + len(report.exhausted),
            )
            if report.drift is not None:
                self.drift_gauges = self.drift_gauges or DriftGauges(self.telemetry.registry)
                self.drift_gauges.record(report.drift)
        logger.info(
            "%s done in %.1fs: %d site(s) aggregated, %d failed, %.2f MB received; %s",
            self.progress.round_label(server_round),
            record["seconds"],
            len(report.replied),
            len(report.failed),
            report.bytes_received / 1e6,
            self.progress.finish(server_round),
        )

    def _log_table(self) -> None:
        rows = [r for r in self.history.records if r.get("central")]
        if not rows:
            return
        protocols = list(rows[-1]["central"])
        header = "round | " + " | ".join(f"{p} mAP / R1 / mINP" for p in protocols)
        lines = [header, "-" * len(header)]
        for r in rows:
            cells = []
            for p in protocols:
                v = r["central"].get(p)
                cells.append(
                    f"{100 * v['mAP']:6.2f} / {100 * v['rank1']:6.2f} / {100 * v['mINP']:6.2f}"
                    if v
                    else "-"
                )
            lines.append(f"{r['round']:5d} | " + " | ".join(cells))
        logger.info("central evaluation per round (%%):\n%s", "\n".join(lines))
        logger.info("history: %s", Path(self.out / "history.json"))
