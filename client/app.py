"""Flower ClientApp: one site's local PPA training (thin wiring; the work is in client/site.py)."""

from __future__ import annotations

import logging
from collections import OrderedDict

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from client.private import BUDGET_EXHAUSTED_CODE
from client.site import RoundResult, SiteTrainer
from ppa.config import load_run_config, overrides_from_run_config
from ppa.cpu_threads import apply_share
from ppa.data.records import Modality
from ppa.dp import PrivacyBudgetExhaustedError
from ppa.node_config import site_spec
from ppa.wire import (
    ARRAYS,
    CALIBRATION_IMAGES,
    CONFIG,
    CONTROL,
    CONTROL_DELTA,
    HALF_PRECISION,
    LOCAL_EPOCHS,
    METRICS,
    NUM_EXAMPLES,
    PROTO_COUNT,
    PROTO_SUM,
    PROTOTYPES,
    SERVER_ROUND,
    SITE,
    SITE_CAMERAS,
    STATISTICS,
    site_identity,
)

logger = logging.getLogger(__name__)

app = ClientApp()

# SiteTrainers live as long as the process (a Ray actor in simulation, the SuperNode's
# ClientApp process in deployment), so data indexes and models are built once per run. A
# simulation actor serves many sites in turn: the cache keeps the most recently used ones
# (federation.trainers_per_process), so memory follows concurrency, not the number of sites.
_TRAINERS: OrderedDict[tuple, SiteTrainer] = OrderedDict()


def _trainer(context: Context) -> SiteTrainer:
    overrides = tuple(overrides_from_run_config(context.run_config))
    key = (context.run_id, context.node_id, overrides)
    if key in _TRAINERS:
        _TRAINERS.move_to_end(key)
        return _TRAINERS[key]
    cfg = load_run_config(context.run_config)
    apply_share()  # torch/BLAS threads: this site's share of the host's cores (ppa/cpu_threads.py)
    trainer = SiteTrainer(cfg, site_spec(context.node_config, cfg))
    _TRAINERS[key] = trainer
    while len(_TRAINERS) > max(int(cfg.federation.trainers_per_process), 1):
        _TRAINERS.popitem(last=False)
    return trainer


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on the site's data from the global arrays; reply with the site's update."""
    trainer = _trainer(context)
    config = msg.content.config_records[CONFIG]
    arrays = {k: v.numpy() for k, v in msg.content.array_records[ARRAYS].items()}
    protos = msg.content.array_records.get(PROTOTYPES)
    control = msg.content.array_records.get(CONTROL)
    try:
        result = trainer.train_round(
            arrays,
            {k: v.numpy() for k, v in protos.items()} if protos is not None else None,
            server_round=int(config[SERVER_ROUND]),
            local_epochs=int(config.get(LOCAL_EPOCHS, trainer.cfg.federation.local_epochs)),
            half_precision=bool(config.get(HALF_PRECISION, False)),
            state=context.state,  # per-site state across rounds: the DP accountant's ledger
            run_id=str(context.run_id),
            control={k: v.numpy() for k, v in control.items()} if control is not None else None,
        )
    except PrivacyBudgetExhaustedError as err:
        # Out of DP budget: nothing was trained or released. An error reply, which the strategy
        # drops with this reason while the other sites go on.
        return Message(Error(code=BUDGET_EXHAUSTED_CODE, reason=str(err)), reply_to=msg)
    content = train_reply(
        result,
        site=trainer.site.name,
        modality=trainer.site.modality.value,
        send_prototypes=bool(trainer.cfg.federation.get("prototypes", True)),
    )
    return Message(content=content, reply_to=msg)


def train_reply(
    result: RoundResult, *, site: str, modality: str, send_prototypes: bool
) -> RecordDict:
    """The content of a site's training reply; prototypes only with
    ``federation.prototypes=true`` (the server then keeps the ones it has)."""
    content = RecordDict(
        {
            ARRAYS: ArrayRecord({k: Array(v) for k, v in result.arrays.items()}),
            METRICS: MetricRecord(result.metrics),
            SITE: ConfigRecord(site_identity(site, Modality.parse(modality))),
        }
    )
    if send_prototypes:
        content[PROTOTYPES] = ArrayRecord(
            {PROTO_SUM: Array(result.proto_sum), PROTO_COUNT: Array(result.proto_count)}
        )
    if result.control_delta is not None:
        content[CONTROL_DELTA] = ArrayRecord({k: Array(v) for k, v in result.control_delta.items()})
    return content


@app.evaluate()
def measure_statistics(msg: Message, context: Context) -> Message:
    """The statistics round (ppa/model/norm_statistics.py): BatchNorm statistics of the global
    model on a sample of the site's images. Test metrics are central (server/evaluation.py)."""
    trainer = _trainer(context)
    config = msg.content.config_records[CONFIG]
    arrays = {k: v.numpy() for k, v in msg.content.array_records[ARRAYS].items()}
    stats, images, cameras = trainer.measure_norm_statistics(
        arrays,
        server_round=int(config[SERVER_ROUND]),
        images=int(config[CALIBRATION_IMAGES]),
    )
    content = RecordDict(
        {
            STATISTICS: ArrayRecord({k: Array(v) for k, v in stats.items()}),
            METRICS: MetricRecord({NUM_EXAMPLES: float(images)}),
            SITE: ConfigRecord(
                {
                    **site_identity(trainer.site.name, trainer.site.modality),
                    SITE_CAMERAS: cameras,
                }
            ),
        }
    )
    return Message(content=content, reply_to=msg)
