"""A site: which data it holds (from node config), and one round of local PPA training."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict
from omegaconf import DictConfig

from client.injection import maybe_fail, poison
from ppa.anonymize import KprAnonymizer
from ppa.config import resolve_path
from ppa.data.keypoints import load_dataset_keypoints
from ppa.data.loader import create_train_loader
from ppa.data.partition import Site, partition_sites
from ppa.data.protocols import load_train_set, protocol_of
from ppa.data.records import Modality
from ppa.dp import (
    PerSampleGradients,
    PrivacyBudgetExhaustedError,
    PrivacyLedger,
    PrivacySettings,
    PrivateStep,
    create_poisson_loader,
    create_release_loader,
    freeze_other_modalities,
    plan_round,
    release_prototypes,
)
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
from ppa.prototypes import IdentityPrototypes, PrototypeAccumulator
from ppa.runtime import derive_seed, seed_everything

logger = logging.getLogger(__name__)

DEPLOYMENT_KEYS = ("site", "modality", "data-root")
SIMULATION_KEYS = ("partition-id", "num-partitions")
# context.state key of a site's privacy ledger (a ConfigRecord; see ppa.dp.PrivacyLedger).
DP_LEDGER = "dp-ledger"
# Error code of the reply of a site out of DP budget (Flower's own codes are 0..8).
BUDGET_EXHAUSTED_CODE = 100


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
        return SiteSpec(
            None, None, None, int(node_config["partition-id"]), int(node_config["num-partitions"])
        )
    raise NodeConfigError(
        f"node config {dict(node_config)} names no site: expected {list(DEPLOYMENT_KEYS)} "
        f"(deployment) or {list(SIMULATION_KEYS)} (simulation)"
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
        self.model = create_model(cfg.model, self.num_classes).to(self.device.device)
        self.anonymizer = (
            KprAnonymizer.from_config(cfg).to(self.device.device) if needs_pose else None
        )
        self.privacy: PrivacySettings | None = None
        self.per_sample: PerSampleGradients | None = None
        if cfg.privacy.get("enabled", False):
            self._setup_privacy()
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
    ) -> RoundResult:
        """Load the global model, train `local_epochs` epochs of PPA, return the update.

        Under DP (`cfg.privacy.enabled`) `state` (the ClientApp's ``context.state``) carries the
        site's privacy ledger across rounds; a round that would exceed the site's budget raises
        `PrivacyBudgetExhaustedError` before touching any data.
        """
        cfg, site = self.cfg, self.site
        inject = cfg.federation.get("inject")
        maybe_fail(inject, site.name, server_round)
        if self.privacy is not None:
            return self._train_round_private(
                global_arrays,
                prototypes,
                server_round=server_round,
                local_epochs=local_epochs,
                half_precision=half_precision,
                state=state,
            )
        seed = derive_seed(int(cfg.seed), server_round, site.name)
        seed_everything(seed, bool(cfg.deterministic))
        state = self.model.state_dict()
        self.model.load_state_dict(unpack_into(state, global_arrays))
        optimizer = create_optimizer(self.model, cfg.train.optimizer)
        loader = create_train_loader(
            site.records,
            self.root,
            input_cfg=cfg.input,
            train_cfg=cfg.train,
            pose_cfg=cfg.pose,
            keypoints=self.keypoints,
            seed=seed,
            on_bad_image=str(cfg.dataset.on_bad_image),
        )
        dim = self.model.num_features
        accumulator = PrototypeAccumulator(2, self.num_classes, dim, device=self.device.device)
        ctx = StepContext(
            model=self.model,
            objective=self.objective,
            anonymizer=self.anonymizer,
            mean=tuple(cfg.input.mean),
            std=tuple(cfg.input.std),
            heatmap_sigma=float(cfg.pose.heatmap_sigma),
            min_confidence=float(cfg.pose.min_confidence),
            device=self.device,
            prototypes=self._global_prototypes(prototypes, dim),
            accumulator=accumulator,
        )
        start = time.perf_counter()
        epochs: list[dict[str, float]] = []
        for e in range(local_epochs):
            global_epoch = (server_round - 1) * local_epochs + e
            set_epoch_lr(optimizer, global_epoch, cfg.train)
            loader.batch_sampler.set_epoch(global_epoch)
            epochs.append(
                train_one_epoch(
                    ctx,
                    loader,
                    optimizer,
                    max_batches=cfg.train.max_batches_per_epoch,
                    progress=False,
                    desc=f"{site.name} r{server_round}",
                )
            )
        seconds = time.perf_counter() - start
        new_state = self.model.state_dict()
        arrays = pack(new_state, site_keys(new_state, site.modality), half_precision)
        arrays = poison(arrays, global_arrays, inject, site.name)
        m = site.modality.index
        last = epochs[-1]
        metrics = {k: float(v) for k, v in last.items() if k.startswith("loss")}
        metrics.update(
            {
                "num-examples": float(len(site.records)),
                "examples-seen": float(sum(e["num_examples"] for e in epochs)),
                "train-seconds": seconds,
                "images-per-second": float(sum(e["num_examples"] for e in epochs) / seconds)
                if seconds > 0
                else 0.0,
            }
        )
        return RoundResult(
            arrays, accumulator.sums[m].cpu().numpy(), accumulator.counts[m].cpu().numpy(), metrics
        )

    # Differential privacy ----------------------------------------------------------------------
    def _setup_privacy(self) -> None:
        """DP-SGD pieces that live as long as the trainer: frozen other modality, hooks."""
        self.privacy = PrivacySettings.from_config(self.cfg)
        frozen = freeze_other_modalities(self.model, self.site.modality)
        # Raises (naming model.norm) for a BatchNorm model; hooks stay on for the model's life.
        self.per_sample = PerSampleGradients(self.model)
        if self.objective.uses("triplet"):
            logger.warning(
                "site %s: ppa.weights.triplet=%.2f ignored under DP (the triplet couples the "
                "records of a batch)",
                self.site.name,
                self.objective.weights["triplet"],
            )
        logger.info(
            "site %s: DP-SGD sigma=%.3f C=%.3f delta=%g budget=%s (%s accountant); %d frozen "
            "parameters of the other modality",
            self.site.name,
            self.privacy.noise_multiplier,
            self.privacy.max_grad_norm,
            self.privacy.delta,
            self.privacy.budget_for(self.site.name),
            self.privacy.accountant,
            len(frozen),
        )

    def load_ledger(self, state: RecordDict) -> PrivacyLedger:
        """The site's ledger from ``context.state`` (empty on its first round)."""
        assert self.privacy is not None
        if DP_LEDGER not in state.config_records:
            return PrivacyLedger(accountant=self.privacy.accountant)
        record = state.config_records[DP_LEDGER]
        owner = str(record.get("site", self.site.name))
        if owner != self.site.name:
            raise ValueError(
                f"context.state['{DP_LEDGER}'] belongs to site {owner!r}, this node trains "
                f"site {self.site.name!r}"
            )
        columns = {k: list(v) for k, v in record.items() if k != "site"}
        return PrivacyLedger.from_columns(
            columns, self.privacy.accountant, source=f"site {self.site.name} {DP_LEDGER}"
        )

    def save_ledger(self, state: RecordDict, ledger: PrivacyLedger) -> None:
        state[DP_LEDGER] = ConfigRecord({"site": self.site.name, **ledger.to_columns()})

    def _train_round_private(
        self,
        global_arrays: Mapping[str, np.ndarray],
        prototypes: Mapping[str, np.ndarray] | None,
        *,
        server_round: int,
        local_epochs: int,
        half_precision: bool,
        state: RecordDict | None,
    ) -> RoundResult:
        """One round of DP-SGD: budget check, Poisson batches, private prototypes."""
        cfg, site, privacy = self.cfg, self.site, self.privacy
        assert privacy is not None and self.per_sample is not None
        if state is None:
            raise ValueError(
                f"site {site.name}: privacy.enabled needs the ClientApp's context.state to "
                "compose the accountant across rounds (train_round(..., state=context.state))"
            )
        ledger = self.load_ledger(state)
        if server_round in ledger.rounds():
            raise ValueError(
                f"site {site.name}: round {server_round} was already accounted "
                f"(ledger rounds {ledger.rounds()}); a repeated round would spend twice"
            )
        seed = derive_seed(int(cfg.seed), server_round, site.name)
        seed_everything(seed, bool(cfg.deterministic))
        loader = create_poisson_loader(
            site.records,
            self.root,
            input_cfg=cfg.input,
            train_cfg=cfg.train,
            pose_cfg=cfg.pose,
            keypoints=self.keypoints,
            expected_batch_size=privacy.batch_size,
            seed=privacy.seed(server_round, site.name, "sampling"),
            on_bad_image=str(cfg.dataset.on_bad_image),
        )
        sampler = loader.batch_sampler
        send_prototypes = bool(cfg.federation.get("prototypes", True))
        planned = plan_round(
            privacy,
            server_round,
            sample_rate=sampler.sample_rate,
            steps=local_epochs * sampler.steps,
            prototypes=send_prototypes,
        )
        budget = privacy.budget_for(site.name)
        try:
            projected = ledger.check_budget(site.name, planned, budget, privacy.delta)
        except PrivacyBudgetExhaustedError as err:
            logger.warning("%s", err)
            raise
        # Commit the spend before training: a crash mid-round must not under-count.
        ledger.record(planned)
        self.save_ledger(state, ledger)

        self.model.load_state_dict(unpack_into(self.model.state_dict(), global_arrays))
        optimizer = create_optimizer(self.model, cfg.train.optimizer)
        dim = self.model.num_features
        step = PrivateStep(
            self.per_sample,
            noise_multiplier=privacy.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            expected_batch_size=sampler.sample_rate * sampler.num_records,
            seed=privacy.seed(server_round, site.name, "noise"),
        )
        ctx = StepContext(
            model=self.model,
            objective=self.objective,
            anonymizer=self.anonymizer,
            mean=tuple(cfg.input.mean),
            std=tuple(cfg.input.std),
            heatmap_sigma=float(cfg.pose.heatmap_sigma),
            min_confidence=float(cfg.pose.min_confidence),
            device=self.device,
            prototypes=self._global_prototypes(prototypes, dim),
            private_step=step,
        )
        start = time.perf_counter()
        epochs: list[dict[str, float]] = []
        for e in range(local_epochs):
            global_epoch = (server_round - 1) * local_epochs + e
            set_epoch_lr(optimizer, global_epoch, cfg.train)
            sampler.set_epoch(global_epoch)
            epochs.append(
                train_one_epoch(
                    ctx, loader, optimizer, progress=False, desc=f"{site.name} r{server_round}"
                )
            )
        if step.steps != planned[0].steps:
            raise RuntimeError(
                f"site {site.name}: took {step.steps} DP steps, accounted {planned[0].steps}"
            )
        m = site.modality.index
        proto_sum = np.zeros((self.num_classes, dim), np.float32)
        proto_count = np.zeros((self.num_classes,), np.float32)
        if send_prototypes:
            release = release_prototypes(
                self.model,
                create_release_loader(
                    site.records,
                    self.root,
                    input_cfg=cfg.input,
                    pose_cfg=cfg.pose,
                    keypoints=self.keypoints,
                    batch_size=max(privacy.batch_size, 1),
                    num_workers=int(cfg.train.num_workers),
                    on_bad_image=str(cfg.dataset.on_bad_image),
                ),
                num_modalities=2,
                num_classes=self.num_classes,
                clip=privacy.prototype_clip,
                noise=privacy.prototype_noise,
                device=self.device,
                mean=tuple(cfg.input.mean),
                std=tuple(cfg.input.std),
                anonymizer=self.anonymizer,
                correct_offsets=self.objective.offsets,
                generator=self._noise_generator(privacy.seed(server_round, site.name, "proto")),
            )
            proto_sum = release.sums[m].cpu().numpy()
            proto_count = release.counts[m].cpu().numpy()
        seconds = time.perf_counter() - start
        epsilon = ledger.epsilon(privacy.delta)
        new_state = self.model.state_dict()
        arrays = pack(new_state, site_keys(new_state, site.modality), half_precision)
        arrays = poison(arrays, global_arrays, cfg.federation.get("inject"), site.name)
        # The realised Poisson batch sizes stay local (the analysis assumes they are not
        # released; the update is normalised by the expected size): report the expectation.
        seen = float(step.steps * sampler.sample_rate * sampler.num_records)
        last = epochs[-1]
        losses = {k: float(v) for k, v in last.items() if k.startswith("loss")}
        logger.info(
            "site %s round %d: DP-SGD %d steps at q=%.4f, %d records clipped of %d; loss %s; "
            "epsilon %.4f (projected %.4f) of budget %s",
            site.name,
            server_round,
            step.steps,
            sampler.sample_rate,
            step.clipped,
            step.records,
            ", ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in losses.items()),
            epsilon,
            projected,
            budget,
        )
        metrics = dict(losses) if privacy.share_losses else {}
        metrics.update(
            {
                "num-examples": float(len(site.records)),
                "examples-seen": seen,
                "train-seconds": seconds,
                "images-per-second": seen / seconds if seconds > 0 else 0.0,
                "epsilon": float(epsilon),
                "dp-delta": privacy.delta,
                "dp-noise-multiplier": privacy.noise_multiplier,
                "dp-sample-rate": float(sampler.sample_rate),
                "dp-steps": float(step.steps),
            }
        )
        if np.isfinite(budget):
            metrics["epsilon-budget"] = float(budget)
        return RoundResult(arrays, proto_sum, proto_count, metrics)

    def _noise_generator(self, seed: int) -> torch.Generator:
        generator = torch.Generator(device=self.device.device)
        generator.manual_seed(seed)
        return generator

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
