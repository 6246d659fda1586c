"""A SuperNode's --node-config -> which site this node is (`NodeSite`), validated against the
run's dataset and partition. The key names live in `ppa.wire`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from ppa.config import resolve_path
from ppa.data.partition import site_layout
from ppa.data.protocols import protocol_of
from ppa.data.records import Modality
from ppa.wire import (
    DEPLOYMENT_KEYS,
    NODE_DATA_ROOT,
    NODE_DATASET,
    NODE_MODALITY,
    NODE_SITE,
    SIMULATION_KEYS,
)


class NodeConfigError(ValueError):
    """A SuperNode's --node-config that does not describe a site."""


@dataclass(frozen=True)
class NodeSite:
    """Who this node is: a site name, its modality and its data root (None: config's root)."""

    name: str | None
    modality: Modality | None
    data_root: Path | None
    partition_id: int | None = None
    num_partitions: int | None = None


def site_spec(node_config: Mapping[str, object], cfg: DictConfig) -> NodeSite:
    """Validate the node config: deployment keys (site, modality, data-root[, dataset]) or
    simulation keys (partition-id, num-partitions)."""
    if any(k in node_config for k in DEPLOYMENT_KEYS):
        missing = [k for k in DEPLOYMENT_KEYS if not str(node_config.get(k, "")).strip()]
        if missing:
            raise NodeConfigError(
                f"node config {dict(node_config)} lacks {missing}; a site needs "
                '--node-config \'site="cam3" modality="infrared" data-root="/data/sysu"\''
            )
        dataset = str(node_config.get(NODE_DATASET, "")).strip()
        if dataset and dataset != protocol_of(cfg.dataset):
            raise NodeConfigError(
                f"node config dataset={dataset!r} but the run uses dataset.protocol="
                f"{protocol_of(cfg.dataset)!r}"
            )
        try:
            modality = Modality.parse(str(node_config[NODE_MODALITY]))
        except ValueError as err:
            raise NodeConfigError(f"node config: {err}") from err
        root = resolve_path(str(node_config[NODE_DATA_ROOT]))
        if not root.is_dir():
            raise NodeConfigError(f"node config data-root={root} is not a directory")
        return NodeSite(str(node_config[NODE_SITE]), modality, root)
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
        return NodeSite(None, None, None, pid, count)
    raise NodeConfigError(
        f"node config {dict(node_config)} names no site: expected {list(DEPLOYMENT_KEYS)} "
        f"(deployment) or {list(SIMULATION_KEYS)} (simulation)"
    )


def check_layout(spec: NodeSite, cfg: DictConfig) -> None:
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
