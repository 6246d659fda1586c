"""The sites of a deployment on this machine: from ``--site NAME:MODALITY[:DATA_ROOT]``
options or from the configured partition (``federation.partition`` of ``dataset``: SYSU-MM01
``cam1``..``cam6``, RegDB ``visible``/``thermal``, ...), as `ppa.node_config.SiteSpec`s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ppa.data import partition
from ppa.data.protocols import protocol_of
from ppa.data.records import Modality
from ppa.launch.flower_config import CONFIG_FORBIDDEN_CHARS, anchored
from ppa.node_config import SiteSpec


def parse_site(spec: str, *, dataset: str, default_root: Path, workdir: Path) -> SiteSpec:
    """Parse ``NAME:MODALITY[:DATA_ROOT]``; a relative DATA_ROOT is anchored at `workdir`."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"--site {spec!r}: expected NAME:MODALITY[:DATA_ROOT]")
    name, modality = parts[0], parts[1]
    if any(c.isspace() for c in name) or any(c in name for c in CONFIG_FORBIDDEN_CHARS):
        raise ValueError(f"--site {spec!r}: site name {name!r} must not contain spaces/quotes")
    try:
        parsed = Modality.parse(modality)
    except ValueError as exc:
        raise ValueError(f"--site {spec!r}: {exc}") from exc
    root = Path(parts[2]) if len(parts) == 3 and parts[2] else default_root
    return SiteSpec.deployed(name, parsed, anchored(root, workdir), dataset)


def site_layout(protocol: str, strategy: str, sites_per_modality: int = 2) -> list[tuple[str, str]]:
    """(site name, modality) pairs of a partition, as ppa.data.partition names them."""
    layout = partition.site_layout(
        strategy, protocol=protocol, sites_per_modality=sites_per_modality
    )
    return [(name, modality.value) for name, modality in layout]


def sites_from_config(cfg: Any, workdir: Path) -> list[SiteSpec]:
    """One SiteSpec per site of the configured partition, all reading `cfg.dataset.root`."""
    protocol = protocol_of(cfg.dataset)
    layout = site_layout(
        protocol, str(cfg.federation.partition), int(cfg.federation.sites_per_modality)
    )
    root = anchored(cfg.dataset.root, workdir)
    return [SiteSpec.deployed(name, modality, root, protocol) for name, modality in layout]
