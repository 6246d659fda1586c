"""A site: which data it holds (from node config), and one round of local PPA training."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from omegaconf import DictConfig

from client.injection import maybe_fail, poison
from client.private import PrivateTraining
from ppa.data.loader import create_statistics_loader
from ppa.data.partition import Site, partition_sites
from ppa.data.protocols import dataset_protocol, load_train_set
from ppa.data.records import Modality
from ppa.data.sampler import MIN_USABLE_LABELS
from ppa.model.norm_statistics import calibration_mode, measure_norm_statistics
from ppa.node_config import NodeConfigError, SiteSpec, check_layout
from ppa.prototypes import IdentityPrototypes, PrototypeAccumulator
from ppa.seeding import derive_seed, seed_everything
from ppa.training.loop import federated_train_config, train_round_epochs
from ppa.training.optim import create_optimizer
from ppa.training.proximal import ProximalTerm
from ppa.training.restricted_softmax import absent_class_logit_scale
from ppa.training.scaffold import ControlledRound, control_keys
from ppa.training.setup import TrainingSetup
from ppa.training.step import StepContext
from ppa.wire import (
    NUM_EXAMPLES,
    PROTO_COUNT,
    PROTO_SUM,
    check_federated_anonymizer,
    pack,
    site_keys,
    unpack_into,
)

logger = logging.getLogger(__name__)

# context.state key of a site's SCAFFOLD control variate c_i (ppa/training/scaffold.py).
SITE_CONTROL = "scaffold-site-control"


@dataclass
class RoundResult:
    arrays: dict[str, np.ndarray]
    proto_sum: np.ndarray
    proto_count: np.ndarray
    metrics: dict[str, float]
    control_delta: dict[str, np.ndarray] | None = None  # SCAFFOLD: c_i+ - c_i


class SiteTrainer:
    """Everything a site keeps in its process between rounds: data index, model, anonymiser.

    Raw images are read from the site's own data root and never leave this object; what it
    returns per round is model arrays, prototype sums/counts and metrics.
    """

    def __init__(self, cfg: DictConfig, spec: SiteSpec):
        # Everything below (local epochs, DP rounds, the device) uses the federation's decay and
        # precision.
        self.cfg = cfg = federated_train_config(cfg)
        check_federated_anonymizer(cfg)
        fed = cfg.federation
        family = dataset_protocol(cfg.dataset)
        protocol = family.name
        if spec.name is not None:
            check_layout(spec, cfg)
            # Deployment: the site's root may hold only its own camera(s).
            cam = family.site_camera(spec.name)
            train_set = load_train_set(
                cfg.dataset,
                root=spec.data_root,
                modalities=[spec.modality],
                cameras=[cam] if cam else None,
                require_complete=False,
            )
        else:
            train_set = load_train_set(cfg.dataset)
        # A deployed node's root holds only its own data: partition for its site alone.
        sites = partition_sites(
            train_set,
            str(fed.partition),
            protocol=protocol,
            sites_per_modality=int(fed.sites_per_modality),
            dirichlet_alpha=fed.dirichlet_alpha,
            seed=int(fed.partition_seed),
            names=[spec.name] if spec.name is not None else None,
        )
        self.site = self._pick(sites, spec)
        identities = len(set(self.site.labels))
        if identities < MIN_USABLE_LABELS:
            raise ValueError(
                f"site {self.site.name!r} ({train_set.root}) holds {identities} identity; "
                f"training needs at least {MIN_USABLE_LABELS}"
            )
        self.setup = TrainingSetup.create(
            cfg, root=train_set.root, num_classes=train_set.num_classes, owner=self.site.name
        )
        self.private = (
            PrivateTraining(self.setup, self.site) if cfg.privacy.get("enabled", False) else None
        )
        self.class_logit_scale = self._class_logit_scale()
        logger.info(
            "site %s (%s): %d images of %d identities",
            self.site.name,
            self.site.modality.value,
            len(self.site.records),
            len(set(self.site.labels)),
        )

    # The set-up's pieces, by the names the ClientApp and tests use.
    @property
    def model(self):
        return self.setup.model

    @property
    def anonymizer(self):
        return self.setup.anonymizer

    @property
    def objective(self):
        return self.setup.objective

    @property
    def device(self):
        return self.setup.device

    @property
    def keypoints(self):
        return self.setup.keypoints

    @property
    def root(self):
        return self.setup.root

    @property
    def num_classes(self) -> int:
        return self.setup.num_classes

    @staticmethod
    def _pick(sites: list[Site], spec: SiteSpec) -> Site:
        if spec.partition_id is not None:
            if spec.num_partitions != len(sites):
                raise NodeConfigError(
                    f"the partition has {len(sites)} sites ({[s.name for s in sites]}) but the "
                    f"simulation runs {spec.num_partitions} SuperNodes: run `flwr run . "
                    f'--federation-config "num-supernodes={len(sites)}"`, or use '
                    "ppa-simulate, which sizes the simulation itself"
                )
            return sites[spec.partition_id]
        by_name = {s.name: s for s in sites}
        if spec.name not in by_name:
            raise NodeConfigError(
                f"site {spec.name!r} is not one of {sorted(by_name)} "
                "produced by the configured partition"
            )
        site = by_name[spec.name]
        if site.modality != spec.modality:
            raise NodeConfigError(
                f"site {spec.name!r} holds {site.modality.value} images but "
                f"its node config says modality={spec.modality.value}"
            )
        return site

    def train_round(
        self,
        global_arrays: Mapping[str, np.ndarray],
        prototypes: Mapping[str, np.ndarray] | None,
        *,
        server_round: int,
        local_epochs: int,
        half_precision: bool,
        state: RecordDict | None = None,
        run_id: str = "",
        control: Mapping[str, np.ndarray] | None = None,
    ) -> RoundResult:
        """Load the global model, train `local_epochs` epochs of PPA, return the update.

        Under DP (`cfg.privacy.enabled`) `state` (the ClientApp's ``context.state``) carries the
        site's privacy ledger across rounds (client/private.py); a round that would exceed the
        site's budget raises `PrivacyBudgetExhaustedError` before touching any data.

        With ``federation.scaffold`` the local gradients are corrected by SCAFFOLD's control
        variates: `control` is the server's ``c``, the site's own ``c_i`` lives in `state`, and
        the result carries ``c_i+ - c_i``.
        """
        cfg, site = self.cfg, self.site
        maybe_fail(cfg.federation.get("inject"), site.name, server_round)
        self._check_arrays(global_arrays)
        if self.private is not None:
            private = self.private.train_round(
                lambda: self.start_round(global_arrays, server_round),
                self._global_prototypes(prototypes, self.model.num_features),
                server_round=server_round,
                local_epochs=local_epochs,
                state=state,
                run_id=run_id,
            )
            return RoundResult(
                self.package(global_arrays, half_precision),
                private.proto_sum,
                private.proto_count,
                private.metrics,
            )
        optimizer = self.start_round(global_arrays, server_round)
        loader = self.setup.train_loader(
            site.records, seed=derive_seed(int(cfg.seed), server_round, site.name)
        )
        accumulator = PrototypeAccumulator(
            2, self.num_classes, self.model.num_features, device=self.device.device
        )
        ctx = self.step_context(
            prototypes, accumulator=accumulator, class_logit_scale=self.class_logit_scale
        )
        start = time.perf_counter()
        mu = float(cfg.federation.get("proximal_mu") or 0.0)
        proximal = ProximalTerm.attach(self.model, mu) if mu > 0 else None
        controlled = self._attach_control(optimizer, control, state)
        try:
            epochs = train_round_epochs(
                ctx,
                loader,
                optimizer,
                cfg.train,
                server_round=server_round,
                local_epochs=local_epochs,
                max_batches=cfg.train.max_batches_per_epoch,
                desc=f"{site.name} r{server_round}",
            )
        finally:
            if proximal is not None:
                proximal.remove()
        control_delta = None
        if controlled is not None:
            site_control, control_delta = controlled.finish()
            state[SITE_CONTROL] = ArrayRecord({k: Array(v) for k, v in site_control.items()})
        seconds = time.perf_counter() - start
        seen = float(sum(e["num_examples"] for e in epochs))
        metrics = {k: float(v) for k, v in epochs[-1].items() if k.startswith("loss")}
        metrics.update(
            {
                NUM_EXAMPLES: float(len(site.records)),
                "examples-seen": seen,
                "train-seconds": seconds,
                "images-per-second": seen / seconds if seconds > 0 else 0.0,
            }
        )
        m = site.modality.index
        return RoundResult(
            self.package(global_arrays, half_precision),
            accumulator.sums[m].cpu().numpy(),
            accumulator.counts[m].cpu().numpy(),
            metrics,
            control_delta,
        )

    def _class_logit_scale(self) -> torch.Tensor | None:
        """FedRS's per-class logit factors for this site's labels, or None (plain softmax)."""
        alpha = self.cfg.federation.get("absent_class_logit_scale")
        if alpha is None:
            return None
        if self.private is not None:
            raise ValueError(
                f"site {self.site.name!r}: federation.absent_class_logit_scale is not applied "
                "under privacy.enabled (the private round computes its own per-record losses); "
                "set it to null"
            )
        return absent_class_logit_scale(
            self.site.labels, self.num_classes, float(alpha), self.device.device
        )

    def _attach_control(
        self,
        optimizer: torch.optim.Optimizer,
        control: Mapping[str, np.ndarray] | None,
        state: RecordDict | None,
    ) -> ControlledRound | None:
        """SCAFFOLD's gradient correction for this round, or None with it off."""
        if not self.cfg.federation.get("scaffold", False):
            return None
        if state is None:
            raise ValueError(
                f"site {self.site.name}: federation.scaffold keeps the site's control variate "
                "in the ClientApp's context.state: pass train_round(..., state=context.state)"
            )
        if control is None:
            raise ValueError(
                f"site {self.site.name}: federation.scaffold is on but the server sent no "
                "control variate (is the server's federation.scaffold on?)"
            )
        keys = control_keys(self.model, site_keys(self.model.state_dict(), self.site.modality))
        own = state.array_records.get(SITE_CONTROL)
        return ControlledRound.attach(
            self.model,
            optimizer,
            keys,
            control,
            {k: v.numpy() for k, v in own.items()} if own is not None else None,
        )

    # Pieces shared by the plain and the private round -----------------------------------------
    def _check_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """The server's arrays must fit this site's model (names and shapes)."""
        own = self.model.state_dict()
        for key, value in arrays.items():
            if key not in own:
                raise ValueError(
                    f"site {self.site.name!r}: the server sent {key!r}, which this "
                    "model does not have (another model or label space?)"
                )
            if tuple(np.shape(value)) != tuple(own[key].shape):
                raise ValueError(
                    f"site {self.site.name!r}: the server's {key!r} has shape "
                    f"{tuple(np.shape(value))}, this model's {tuple(own[key].shape)}"
                )

    def start_round(
        self, global_arrays: Mapping[str, np.ndarray], server_round: int
    ) -> torch.optim.Optimizer:
        """Seed the round (run seed, round, site), load the global model, a fresh optimiser."""
        cfg = self.cfg
        seed_everything(
            derive_seed(int(cfg.seed), server_round, self.site.name), bool(cfg.deterministic)
        )
        self.model.load_state_dict(unpack_into(self.model.state_dict(), global_arrays))
        return create_optimizer(self.model, cfg.train.optimizer)

    def step_context(
        self, prototypes: Mapping[str, np.ndarray] | None, **fields: object
    ) -> StepContext:
        return self.setup.step_context(
            prototypes=self._global_prototypes(prototypes, self.model.num_features), **fields
        )

    def measure_norm_statistics(
        self, global_arrays: Mapping[str, np.ndarray], *, server_round: int, images: int
    ) -> tuple[dict[str, np.ndarray], int, list[int]]:
        """BatchNorm statistics of the global model over up to `images` of this site's raw
        images (a seeded sample per round and site): (statistics, images measured, the cameras
        they came from)."""
        if self.private is not None:
            # Statistics of raw images are not covered by the DP guarantee: never sent.
            raise PermissionError(
                f"site {self.site.name}: privacy.enabled, so no BatchNorm statistics of its "
                "images leave the site (the statistics round does not run under DP)"
            )
        cfg = self.cfg
        self._check_arrays(global_arrays)
        self.model.load_state_dict(unpack_into(self.model.state_dict(), global_arrays))
        rng = np.random.default_rng(derive_seed(int(cfg.seed), server_round, self.site.name))
        count = min(int(images), len(self.site.records))
        chosen = sorted(rng.choice(len(self.site.records), size=count, replace=False).tolist())
        sample = [self.site.records[i] for i in chosen]
        loader = create_statistics_loader(sample, self.root, cfg)
        stats, measured = measure_norm_statistics(
            self.model,
            loader,
            mean=tuple(cfg.input.mean),
            std=tuple(cfg.input.std),
            device=self.device.device,
            mode=calibration_mode(cfg),
        )
        return stats, measured, sorted({int(r.cam) for r in sample})

    def package(
        self, global_arrays: Mapping[str, np.ndarray], half_precision: bool
    ) -> dict[str, np.ndarray]:
        """The arrays this site sends: shared parts + its own stem and offset."""
        state = self.model.state_dict()
        arrays = pack(state, site_keys(state, self.site.modality), half_precision)
        return poison(arrays, global_arrays, self.cfg.federation.get("inject"), self.site.name)

    def _global_prototypes(
        self, arrays: Mapping[str, np.ndarray] | None, dim: int
    ) -> IdentityPrototypes | None:
        if not arrays or not self.objective.uses_prototypes():
            return None
        sums = torch.stack(
            [
                torch.as_tensor(np.asarray(arrays[f"{PROTO_SUM}.{m.value}"]))
                for m in (Modality.VISIBLE, Modality.INFRARED)
            ]
        ).float()
        counts = torch.stack(
            [
                torch.as_tensor(np.asarray(arrays[f"{PROTO_COUNT}.{m.value}"]))
                for m in (Modality.VISIBLE, Modality.INFRARED)
            ]
        ).float()
        if sums.shape[1:] != (self.num_classes, dim):
            raise ValueError(
                f"server prototypes have shape {tuple(sums.shape)}, expected "
                f"(2, {self.num_classes}, {dim})"
            )
        return IdentityPrototypes.from_sums(sums, counts).to(self.device.device)
