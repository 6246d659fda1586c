"""A site: which data it holds (from node config), and one round of local PPA training."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import RecordDict
from omegaconf import DictConfig

from client.injection import maybe_fail, poison
from client.private import PrivateTraining
from ppa.anonymize import KprAnonymizer
from ppa.config import resolve_path
from ppa.data.keypoints import load_dataset_keypoints
from ppa.data.loader import create_eval_loader, create_train_loader
from ppa.data.partition import Site, partition_sites, site_layout
from ppa.data.protocols import load_train_set, protocol_of
from ppa.data.records import Modality
from ppa.data.sampler import MIN_USABLE_LABELS
from ppa.engine import (
    DeviceSettings,
    PPAObjective,
    StepContext,
    create_optimizer,
    set_epoch_lr,
    train_one_epoch,
)
from ppa.federation import PROTO_COUNT, PROTO_SUM, pack, site_keys, unpack_into
from ppa.model import create_model
from ppa.norm_calibration import measure_norm_statistics
from ppa.prototypes import IdentityPrototypes, PrototypeAccumulator
from ppa.runtime import derive_seed, seed_everything

logger = logging.getLogger(__name__)

DEPLOYMENT_KEYS = ("site", "modality", "data-root")
SIMULATION_KEYS = ("partition-id", "num-partitions")


class NodeConfigError(ValueError):
    """A SuperNode's --node-config that does not describe a site."""


@dataclass(frozen=True)
class SiteSpec:
    """Who this node is: a site name, its modality and its data root (None: config's root)."""

    name: str | None
    modality: Modality | None
    data_root: Path | None
    partition_id: int | None = None
    num_partitions: int | None = None


def site_spec(node_config: Mapping[str, object], cfg: DictConfig) -> SiteSpec:
    """Validate the node config: deployment keys (site, modality, data-root[, dataset]) or
    simulation keys (partition-id, num-partitions)."""
    if any(k in node_config for k in DEPLOYMENT_KEYS):
        missing = [k for k in DEPLOYMENT_KEYS if not str(node_config.get(k, "")).strip()]
        if missing:
            raise NodeConfigError(
                f"node config {dict(node_config)} lacks {missing}; a site needs "
                '--node-config \'site="cam3" modality="infrared" data-root="/data/sysu"\''
            )
        dataset = str(node_config.get("dataset", "")).strip()
        if dataset and dataset != protocol_of(cfg.dataset):
            raise NodeConfigError(
                f"node config dataset={dataset!r} but the run uses dataset.protocol="
                f"{protocol_of(cfg.dataset)!r}"
            )
        try:
            modality = Modality.parse(str(node_config["modality"]))
        except ValueError as err:
            raise NodeConfigError(f"node config: {err}") from err
        root = resolve_path(str(node_config["data-root"]))
        if not root.is_dir():
            raise NodeConfigError(f"node config data-root={root} is not a directory")
        return SiteSpec(str(node_config["site"]), modality, root)
    if all(k in node_config for k in SIMULATION_KEYS):
        try:
            pid, count = (int(str(node_config[k])) for k in SIMULATION_KEYS)
        except ValueError as err:
            raise NodeConfigError(
                f"node config {dict(node_config)}: partition-id and num-partitions must be integers"
            ) from err
        if not 0 <= pid < count:
            raise NodeConfigError(
                f"node config partition-id={pid} is outside 0..num-partitions-1={count - 1}"
            )
        return SiteSpec(None, None, None, pid, count)
    raise NodeConfigError(
        f"node config {dict(node_config)} names no site: expected {list(DEPLOYMENT_KEYS)} "
        f"(deployment) or {list(SIMULATION_KEYS)} (simulation)"
    )


def _check_layout(spec: SiteSpec, cfg: DictConfig) -> None:
    """A deployed site's name and modality must be one the configured partition produces."""
    fed = cfg.federation
    layout = dict(
        site_layout(
            str(fed.partition),
            protocol=protocol_of(cfg.dataset),
            sites_per_modality=int(fed.sites_per_modality),
        )
    )
    if spec.name not in layout:
        raise NodeConfigError(
            f"site {spec.name!r} is not one of {sorted(layout)} of the {fed.partition} partition"
        )
    if layout[spec.name] != spec.modality:
        raise NodeConfigError(
            f"site {spec.name!r} holds {layout[spec.name].value} images in the "
            f"{fed.partition} partition, its node config says modality={spec.modality.value}"
        )


def _sysu_camera(site_name: str) -> int | None:
    if site_name.startswith("cam") and site_name[3:].isdigit():
        return int(site_name[3:])
    return None


@dataclass
class RoundResult:
    arrays: dict[str, np.ndarray]
    proto_sum: np.ndarray
    proto_count: np.ndarray
    metrics: dict[str, float]


class SiteTrainer:
    """Everything a site keeps in its process between rounds: data index, model, anonymiser.

    Raw images are read from the site's own data root and never leave this object; what it
    returns per round is model arrays, prototype sums/counts and metrics.
    """

    def __init__(self, cfg: DictConfig, spec: SiteSpec):
        self.cfg = cfg
        self.objective = PPAObjective.from_config(cfg.ppa)
        self.device = DeviceSettings.from_config(cfg)
        fed = cfg.federation
        protocol = protocol_of(cfg.dataset)
        if spec.name is not None:
            _check_layout(spec, cfg)
            # Deployment: the site's root may hold only its own camera(s).
            cam = _sysu_camera(spec.name) if protocol == "sysu" else None
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
        self.num_classes = train_set.num_classes
        self.root = train_set.root
        needs_pose = self.objective.anonymized_view
        self.keypoints = (
            load_dataset_keypoints(
                self.root,
                cfg.dataset.keypoints,
                required=needs_pose and cfg.pose.missing == "error",
            )
            if needs_pose
            else None
        )
        self.model = self.device.place(create_model(cfg.model, self.num_classes))
        self.anonymizer = (
            KprAnonymizer.from_config(cfg).to(self.device.device) if needs_pose else None
        )
        self.private = PrivateTraining(self) if cfg.privacy.get("enabled", False) else None
        logger.info(
            "site %s (%s): %d images of %d identities",
            self.site.name,
            self.site.modality.value,
            len(self.site.records),
            len(set(self.site.labels)),
        )

    @staticmethod
    def _pick(sites: list[Site], spec: SiteSpec) -> Site:
        if spec.partition_id is not None:
            if spec.num_partitions != len(sites):
                raise NodeConfigError(
                    f"the partition has {len(sites)} sites ({[s.name for s in sites]}) but the "
                    f"simulation runs {spec.num_partitions} SuperNodes: set num-supernodes="
                    f"{len(sites)}"
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
    ) -> RoundResult:
        """Load the global model, train `local_epochs` epochs of PPA, return the update.

        Under DP (`cfg.privacy.enabled`) `state` (the ClientApp's ``context.state``) carries the
        site's privacy ledger across rounds (client/private.py); a round that would exceed the
        site's budget raises `PrivacyBudgetExhaustedError` before touching any data.
        """
        cfg, site = self.cfg, self.site
        maybe_fail(cfg.federation.get("inject"), site.name, server_round)
        self._check_arrays(global_arrays)
        if self.private is not None:
            return self.private.train_round(
                global_arrays,
                prototypes,
                server_round=server_round,
                local_epochs=local_epochs,
                half_precision=half_precision,
                state=state,
                run_id=run_id,
            )
        optimizer = self.start_round(global_arrays, server_round)
        loader = create_train_loader(
            site.records,
            self.root,
            input_cfg=cfg.input,
            train_cfg=cfg.train,
            pose_cfg=cfg.pose,
            keypoints=self.keypoints,
            seed=derive_seed(int(cfg.seed), server_round, site.name),
            on_bad_image=str(cfg.dataset.on_bad_image),
        )
        accumulator = PrototypeAccumulator(
            2, self.num_classes, self.model.num_features, device=self.device.device
        )
        ctx = self.step_context(prototypes, accumulator=accumulator)
        start = time.perf_counter()
        epochs = self.run_epochs(
            ctx,
            loader,
            optimizer,
            loader.batch_sampler,
            server_round=server_round,
            local_epochs=local_epochs,
            max_batches=cfg.train.max_batches_per_epoch,
        )
        seconds = time.perf_counter() - start
        seen = float(sum(e["num_examples"] for e in epochs))
        metrics = {k: float(v) for k, v in epochs[-1].items() if k.startswith("loss")}
        metrics.update(
            {
                "num-examples": float(len(site.records)),
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
        self, prototypes: Mapping[str, np.ndarray] | None, **extra: object
    ) -> StepContext:
        cfg = self.cfg
        return StepContext.from_config(
            cfg,
            model=self.model,
            objective=self.objective,
            anonymizer=self.anonymizer,
            device=self.device,
            prototypes=self._global_prototypes(prototypes, self.model.num_features),
            **extra,
        )

    def run_epochs(
        self,
        ctx: StepContext,
        loader,
        optimizer: torch.optim.Optimizer,
        sampler,
        *,
        server_round: int,
        local_epochs: int,
        max_batches: int | None = None,
    ) -> list[dict[str, float]]:
        """`local_epochs` epochs; the lr schedule counts global epochs across rounds."""
        epochs = []
        for e in range(local_epochs):
            global_epoch = (server_round - 1) * local_epochs + e
            set_epoch_lr(optimizer, global_epoch, self.cfg.train)
            sampler.set_epoch(global_epoch)
            epochs.append(
                train_one_epoch(
                    ctx,
                    loader,
                    optimizer,
                    max_batches=max_batches,
                    progress=False,
                    desc=f"{self.site.name} r{server_round}",
                )
            )
        return epochs

    def measure_norm_statistics(
        self, global_arrays: Mapping[str, np.ndarray], *, server_round: int, images: int
    ) -> tuple[dict[str, np.ndarray], int]:
        """BatchNorm statistics of the global model over up to `images` of this site's raw
        images (a seeded sample per round and site)."""
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
        loader = create_eval_loader(
            [self.site.records[i] for i in chosen],
            self.root,
            input_cfg=cfg.input,
            batch_size=int(cfg.train.num_ids) * int(cfg.train.num_instances),
            num_workers=0,
            pose_cfg=cfg.pose,
            keypoints=None,  # raw images only: no anonymisation, no keypoints
            on_bad_image=str(cfg.dataset.on_bad_image),
        )
        return measure_norm_statistics(
            self.model,
            loader,
            mean=tuple(cfg.input.mean),
            std=tuple(cfg.input.std),
            device=self.device.device,
        )

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
        if not arrays or not self.objective.uses("align"):
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
