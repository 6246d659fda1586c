"""Split a training set into federated sites (camera owners), each of one modality.

Strategies (``federation.partition``):

- ``by_camera``: SYSU-MM01 six sites ``cam1``..``cam6``; RegDB ``visible`` and ``thermal``.
- ``by_modality``: one ``visible`` and one ``infrared`` site.
- ``by_identity``: the labels are split into ``sites_per_modality`` disjoint groups; site
  ``<modality>-<g>`` holds group g's images of that modality (the same grouping for both
  modalities). Group sizes are equal, or skewed by Dirichlet(alpha) proportions.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from ppa.data.protocols import get_protocol
from ppa.data.records import Modality, TrainRecord
from ppa.data.splits import TrainSet

logger = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("by_camera", "by_modality", "by_identity")
# Fewest identities a by_identity site may hold: a triplet needs a positive and a negative.
MIN_IDS_PER_SITE = 2


@dataclass
class Site:
    """One federated site: its name, its modality and its training records."""

    name: str
    modality: Modality
    records: list[TrainRecord]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        """Sorted distinct labels the site holds."""
        return sorted({record.label for record in self.records})


class EmptySiteError(ValueError):
    """A partition left a site without images."""

    def __init__(self, site: str, strategy: str):
        self.site = site
        super().__init__(f"site {site!r} of partition {strategy!r} has no training images")


def partition_sites(
    train_set: TrainSet,
    strategy: str,
    *,
    protocol: str,
    sites_per_modality: int = 2,
    dirichlet_alpha: float | None = None,
    seed: int = 0,
    names: Collection[str] | None = None,
) -> list[Site]:
    """Partition `train_set` into sites, sorted by name; every site holds one modality.

    Deterministic for `seed`; by_identity groups the whole label space (0..num_classes-1, from
    the split files), so every party computes the same groups whichever images it holds.
    `names` keeps only the named sites: a deployment node, whose root holds only its own
    site's images, asks for its own. Raises EmptySiteError naming a returned site that would
    be empty.
    """
    get_protocol(protocol)
    if strategy == "by_camera":
        sites = _by_camera(train_set.records, protocol)
    elif strategy == "by_modality":
        sites = [
            Site(m.value, m, [r for r in train_set.records if r.modality is m]) for m in Modality
        ]
    elif strategy == "by_identity":
        sites = _by_identity(train_set, sites_per_modality, dirichlet_alpha, seed)
    else:
        raise ValueError(
            f"partition strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
        )
    if names is not None:
        known = {site.name for site in sites}
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(
                f"partition {strategy!r} has no site(s) {unknown}; its sites are {sorted(known)}"
            )
        sites = [site for site in sites if site.name in set(names)]
    for site in sites:
        if not site.records:
            raise EmptySiteError(site.name, strategy)
    sites.sort(key=lambda site: site.name)
    logger.info(
        "partition %s: %s", strategy, ", ".join(f"{s.name}={len(s.records)}" for s in sites)
    )
    return sites


def site_layout(
    strategy: str, *, protocol: str, sites_per_modality: int = 2
) -> list[tuple[str, Modality]]:
    """(name, modality) of every site a partition produces, sorted by name, from the rule
    alone (no data read): what a deployment or a simulation lays out before data exists."""
    family = get_protocol(protocol)
    if strategy == "by_camera":
        layout = [(name, modality) for _, name, modality in family.camera_sites()]
    elif strategy == "by_modality":
        layout = [(m.value, m) for m in Modality]
    elif strategy == "by_identity":
        if sites_per_modality < 1:
            raise ValueError(f"sites_per_modality must be >= 1, got {sites_per_modality}")
        layout = [(f"{m.value}-{g}", m) for m in Modality for g in range(sites_per_modality)]
    else:
        raise ValueError(
            f"partition strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
        )
    return sorted(layout, key=lambda site: site[0])


def _by_camera(records: list[TrainRecord], protocol: str) -> list[Site]:
    camera_sites = get_protocol(protocol).camera_sites()
    cameras = tuple(cam for cam, _, _ in camera_sites)
    by_cam: dict[int, list[TrainRecord]] = {cam: [] for cam in cameras}
    for record in records:
        if record.cam not in by_cam:
            raise ValueError(
                f"record {record.path!r} has camera {record.cam}, not a {protocol} camera {cameras}"
            )
        by_cam[record.cam].append(record)
    return [Site(name, modality, by_cam[cam]) for cam, name, modality in camera_sites]


def _by_identity(train_set: TrainSet, groups: int, alpha: float | None, seed: int) -> list[Site]:
    if groups < 1:
        raise ValueError(f"sites_per_modality must be >= 1, got {groups}")
    if alpha is not None and alpha <= 0:
        raise ValueError(f"dirichlet_alpha must be > 0 (or null for equal groups), got {alpha}")
    labels = np.arange(train_set.num_classes, dtype=np.int64)
    if len(labels) < MIN_IDS_PER_SITE * groups:
        raise ValueError(
            f"by_identity with {groups} sites per modality needs at least "
            f"{MIN_IDS_PER_SITE * groups} identities, the training set has {len(labels)}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(labels)
    sizes = _group_sizes(len(labels), groups, alpha, rng)
    group_of: dict[int, int] = {}
    start = 0
    for group, size in enumerate(sizes):
        group_of.update((int(label), group) for label in order[start : start + size])
        start += size
    sites = {(m, g): Site(f"{m.value}-{g}", m, []) for m in Modality for g in range(groups)}
    for record in train_set.records:
        sites[(record.modality, group_of[record.label])].records.append(record)
    return list(sites.values())


def _group_sizes(
    num_labels: int, groups: int, alpha: float | None, rng: np.random.Generator
) -> list[int]:
    """Identities per group: as equal as possible, or MIN_IDS_PER_SITE + a Dirichlet share."""
    if alpha is None:
        base, extra = divmod(num_labels, groups)
        return [base + (1 if g < extra else 0) for g in range(groups)]
    proportions = rng.dirichlet(np.full(groups, float(alpha)))
    spare = num_labels - MIN_IDS_PER_SITE * groups
    return [MIN_IDS_PER_SITE + int(n) for n in rng.multinomial(spare, proportions)]
