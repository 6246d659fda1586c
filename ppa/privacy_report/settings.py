"""The rows of the privacy-utility report: anonymiser settings, and what a checkpoint was
trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ppa.config import CONFIG_DIR, resolve_path


@dataclass(frozen=True)
class AnonymizerSetting:
    """One row of the report: an anonymiser config, pose-guided or not, and its model."""

    label: str
    anonymizer: dict[str, Any]  # the full `anonymizer` config group
    pose_guided: bool
    checkpoint: Path | None

    @classmethod
    def from_entry(
        cls, entry: Any, index: int, default_checkpoint: Path | None
    ) -> AnonymizerSetting:
        """Parse `privacy_report.settings[index]`."""
        key = f"privacy_report.settings[{index}]"
        entry = OmegaConf.to_container(entry, resolve=True) if OmegaConf.is_config(entry) else entry
        if not isinstance(entry, dict) or "anonymizer" not in entry:
            raise ValueError(f"{key} must be a mapping with an `anonymizer` key, got {entry!r}")
        unknown = set(entry) - {
            "anonymizer",
            "pose_guided",
            "strength",
            "levels",
            "label",
            "checkpoint",
        }
        if unknown:
            raise ValueError(f"{key}: unknown key(s) {sorted(unknown)}")
        name = str(entry["anonymizer"])
        source = CONFIG_DIR / "anonymizer" / f"{name}.yaml"
        if not source.is_file():
            known = sorted(p.stem for p in source.parent.glob("*.yaml"))
            raise ValueError(f"{key}: anonymizer={name!r} is not one of {known}")
        anonymizer = OmegaConf.to_container(OmegaConf.load(source), resolve=True)
        if "strength" in entry:
            anonymizer["strength"] = entry["strength"]
        if "levels" in entry:
            anonymizer["levels"] = {**anonymizer["levels"], **dict(entry["levels"])}
        pose_guided = bool(entry.get("pose_guided", True))
        label = entry.get("label") or (
            f"{name} {anonymizer['strength']:g} {'KPR' if pose_guided else 'whole'}"
        )
        checkpoint = entry.get("checkpoint")
        return cls(
            str(label),
            anonymizer,
            pose_guided,
            resolve_path(checkpoint) if checkpoint else default_checkpoint,
        )

    @property
    def name(self) -> str:
        return str(self.anonymizer["name"])

    def apply(self, cfg: DictConfig) -> DictConfig:
        """`cfg` with this setting's anonymiser (replacing the whole group: anonymisers differ
        in their keys, e.g. the noise anonymiser's key files) and pose guidance."""
        out = cfg.copy()
        with open_dict(out):
            out.anonymizer = OmegaConf.create(self.anonymizer)
            out.ppa.pose_guided = self.pose_guided
        return out


def trained_with(payload: dict) -> dict[str, Any]:
    config = payload.get("config") or {}
    return {
        "method": config.get("ppa", {}).get("name"),
        "anonymizer": config.get("anonymizer", {}).get("name"),
        "strength": config.get("anonymizer", {}).get("strength"),
        "pose_guided": config.get("ppa", {}).get("pose_guided"),
        "epochs": payload.get("epoch"),
        "server_round": payload.get("server_round"),
    }
