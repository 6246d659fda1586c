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
# Which views' BNNeck features make the identity prototypes (ppa.prototype_views): both the raw
# features and the corrected anonymised ones (what retrieval compares), the raw only, or the
# corrected only (the method's wording).
PROTOTYPE_VIEWS = ("both", "raw", "corrected")


@dataclass(frozen=True)
class PPAObjective:
    """Which views and loss terms a training step uses (configs/ppa/*.yaml)."""

    anonymized_view: bool
    offsets: bool
    weights: Mapping[str, float]
    label_smoothing: float = 0.1
    align_temperature: float | None = None
    kpr_joints: tuple[int, ...] = ALL_JOINTS  # the joints L_kpr pools (ppa.kpr_joints)
    prototype_views: str = "both"  # PROTOTYPE_VIEWS

    def __post_init__(self) -> None:
        if self.prototype_views not in PROTOTYPE_VIEWS:
            raise ValueError(
                f"ppa.prototype_views must be one of {', '.join(PROTOTYPE_VIEWS)}, "
                f"got {self.prototype_views!r}"
            )
        if self.prototype_views == "corrected" and not (self.anonymized_view and self.offsets):
            raise ValueError(
                "ppa.prototype_views=corrected needs the anonymised view and the offsets "
                "(anonymized_view=true, offsets=true)"
            )

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
            prototype_views=str(ppa_cfg.get("prototype_views", "both")),
        )

    def uses(self, term: str) -> bool:
        return self.weights.get(term, 0.0) > 0.0

    def prototype_rows(self, n: int) -> slice:
        """The rows of a step's features (raw views first, then `n` anonymised) that feed the
        prototypes."""
        return {"both": slice(None), "raw": slice(0, n), "corrected": slice(n, None)}[
            self.prototype_views
        ]

    def uses_prototypes(self) -> bool:
        """Whether a step needs the global identity prototypes."""
        return any(self.uses(term) for term in PROTOTYPE_TERMS)
