"""Which views and loss terms a training step uses (configs/ppa/*.yaml)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from omegaconf import DictConfig

from ppa.pose.joint_sets import ALL_JOINTS, joint_indices

LOSS_TERMS = ("id", "triplet", "kpr", "dc", "align", "proto")
# Terms that pull features toward the global identity prototypes: L_align (the other
# modality's) and L_proto (the sample's own modality's, pooled over its cameras).
PROTOTYPE_TERMS = ("align", "proto")


@dataclass(frozen=True)
class PPAObjective:
    """Which views and loss terms a training step uses (configs/ppa/*.yaml)."""

    anonymized_view: bool
    offsets: bool
    weights: Mapping[str, float]
    label_smoothing: float = 0.1
    align_temperature: float | None = None
    kpr_joints: tuple[int, ...] = ALL_JOINTS  # the joints L_kpr pools (ppa.kpr_joints)

    @classmethod
    def from_config(cls, ppa_cfg: DictConfig) -> PPAObjective:
        weights = {k: float(ppa_cfg.weights.get(k, 0.0)) for k in LOSS_TERMS}
        if not ppa_cfg.anonymized_view and any(weights[k] for k in ("kpr", "dc")):
            raise ValueError(f"ppa={ppa_cfg.name}: the kpr/dc losses need anonymized_view=true")
        return cls(
            anonymized_view=bool(ppa_cfg.anonymized_view),
            offsets=bool(ppa_cfg.offsets),
            weights=weights,
            label_smoothing=float(ppa_cfg.label_smoothing),
            align_temperature=(
                float(ppa_cfg.align_temperature)
                if ppa_cfg.get("align_temperature") is not None
                else None
            ),
            kpr_joints=joint_indices(ppa_cfg.get("kpr_joints", "all")),
        )

    def uses(self, term: str) -> bool:
        return self.weights.get(term, 0.0) > 0.0

    def uses_prototypes(self) -> bool:
        """Whether a step needs the global identity prototypes."""
        return any(self.uses(term) for term in PROTOTYPE_TERMS)
