"""The node-config contract of a site: the keys a SuperNode's ``--node-config`` carries, written
by the deployment launcher (`ppa.launch.deployment`, docker compose files) and read by the
ClientApp (`client.site`). Both sides import the key names and `SiteSpec` from here, so the
contract is written once; it is plain data (no Flower import).

Deployment: ``site``, ``modality``, ``data-root`` and optionally ``dataset`` (the protocol the
site's data follows). Simulation: Flower's ``partition-id`` and ``num-partitions``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from ppa.config import resolve_path
from ppa.data.partition import site_layout
from ppa.data.protocols import protocol_of
from ppa.data.records import Modality

SITE = "site"
MODALITY = "modality"
DATA_ROOT = "data-root"
DATASET = "dataset"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
DEPLOYMENT_KEYS = (SITE, MODALITY, DATA_ROOT)
SIMULATION_KEYS = (PARTITION_ID, NUM_PARTITIONS)


class NodeConfigError(ValueError):
    """A SuperNode's --node-config that does not describe a site."""


@dataclass(frozen=True)
class SiteSpec:
    """Who a node is: a deployed site (name, modality, data root, dataset protocol) or a
    simulated one (partition id of num partitions; its data is the config's root)."""

    name: str | None
    modality: Modality | None
    data_root: Path | None
    partition_id: int | None = None
    num_partitions: int | None = None
    dataset: str | None = None  # the protocol the data follows (cfg.dataset.protocol)

    @classmethod
    def deployed(
        cls, name: str, modality: str | Modality, data_root: Path, dataset: str | None = None
    ) -> SiteSpec:
        """A deployed site: `modality` by name (``visible``, ``infrared``, ``ir``, ...)."""
        return cls(name, Modality.parse(modality), Path(data_root), dataset=dataset)

    def node_config(self) -> dict[str, str]:
        """The deployment keys of this site, as its SuperNode's --node-config carries them."""
        if self.name is None or self.modality is None or self.data_root is None:
            raise NodeConfigError(
                f"{self} is a simulated site: only deployed sites have a node config"
            )
        values = {
            SITE: self.name,
            MODALITY: self.modality.value,
            DATA_ROOT: str(self.data_root),
        }
        if self.dataset is not None:
            values[DATASET] = self.dataset
        return values


def site_spec(node_config: Mapping[str, object], cfg: DictConfig) -> SiteSpec:
    """Validate a node config against the run's config: deployment keys (site, modality,
    data-root[, dataset]) or simulation keys (partition-id, num-partitions)."""
    if any(k in node_config for k in DEPLOYMENT_KEYS):
        missing = [k for k in DEPLOYMENT_KEYS if not str(node_config.get(k, "")).strip()]
        if missing:
            raise NodeConfigError(
                f"node config {dict(node_config)} lacks {missing}; a site needs "
                f'--node-config \'{SITE}="cam3" {MODALITY}="infrared" '
                f'{DATA_ROOT}="/data/sysu"\''
            )
        dataset = str(node_config.get(DATASET, "")).strip()
        if dataset and dataset != protocol_of(cfg.dataset):
            raise NodeConfigError(
                f"node config {DATASET}={dataset!r} but the run uses dataset.protocol="
                f"{protocol_of(cfg.dataset)!r}"
            )
        try:
            modality = Modality.parse(str(node_config[MODALITY]))
        except ValueError as err:
            raise NodeConfigError(f"node config: {err}") from err
        root = resolve_path(str(node_config[DATA_ROOT]))
        if not root.is_dir():
            raise NodeConfigError(f"node config {DATA_ROOT}={root} is not a directory")
        return SiteSpec(str(node_config[SITE]), modality, root, dataset=dataset or None)
    if all(k in node_config for k in SIMULATION_KEYS):
        try:
            pid, count = (int(str(node_config[k])) for k in SIMULATION_KEYS)
        except ValueError as err:
            raise NodeConfigError(
                f"node config {dict(node_config)}: {PARTITION_ID} and {NUM_PARTITIONS} must be "
                "integers"
            ) from err
        if not 0 <= pid < count:
            raise NodeConfigError(
                f"node config {PARTITION_ID}={pid} is outside 0..{NUM_PARTITIONS}-1={count - 1}"
            )
        return SiteSpec(None, None, None, pid, count)
    raise NodeConfigError(
        f"node config {dict(node_config)} names no site: expected {list(DEPLOYMENT_KEYS)} "
        f"(deployment) or {list(SIMULATION_KEYS)} (simulation)"
    )


def check_layout(spec: SiteSpec, cfg: DictConfig) -> None:
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
