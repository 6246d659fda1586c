"""Refuse test settings that score identities the model was trained on.

RegDB's ten trials are ten random halvings of the identities: trial t's model is trained on
trial t's train half and tested on trial t's test half only; any other trial's test half
shares about half its identities with trial t's train half. SYSU-MM01 trains on the
train + val ids and tests on the disjoint test ids. Both rules reduce to one check: the
training identities and the identities of every evaluated test split are disjoint, when
both come from the same dataset root. RegDB gets a clearer message naming the trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppa.data.protocols import TestSetting, dataset_root, load_label_space, protocol_of

# Identities an error message lists before eliding the rest.
_MAX_LISTED = 8


class IdentityLeakError(ValueError):
    """Evaluating on identities the model was trained on (or another RegDB trial)."""


@dataclass(frozen=True)
class TrainingSource:
    """Where a model's training identities came from."""

    dataset: str
    protocol: str
    root: Path
    train_trial: int | None
    identities: frozenset[int]

    @classmethod
    def from_config(cls, dataset_cfg: Any) -> TrainingSource:
        """From the ``dataset`` config the model was trained with (a checkpoint stores it)."""
        protocol = protocol_of(dataset_cfg)
        trial = dataset_cfg.get("train_trial") if protocol == "regdb" else None
        return cls(
            dataset=str(dataset_cfg.get("name", protocol)),
            protocol=protocol,
            root=dataset_root(dataset_cfg),
            train_trial=None if trial is None else int(trial),
            identities=frozenset(load_label_space(dataset_cfg)),
        )


def check_disjoint(source: TrainingSource, settings: Sequence[TestSetting]) -> None:
    """Raise `IdentityLeakError` when a setting of the same dataset tests trained identities.

    Settings read from another root (a cross-dataset test) have their own identity space and
    pass.
    """
    same = [s for s in settings if _same_root(s.split.root, source.root)]
    if not same:
        return
    if source.protocol == "regdb" and source.train_trial is not None:
        others = sorted({s.trial for s in same if s.trial != source.train_trial})
        if others:
            raise IdentityLeakError(
                f"{source.dataset}: a model trained on RegDB trial {source.train_trial} "
                f"cannot be evaluated on trial(s) {others}: each trial splits the identities "
                f"anew, so those test halves hold identities it was trained on. Evaluate it "
                f"with dataset.test.trials=[{source.train_trial}], and train one model per "
                f"trial for the 10-trial mean (scripts/regdb_trials.py)"
            )
    for setting in same:
        tested = {r.pid for r in (*setting.split.query, *setting.split.gallery)}
        leaked = sorted(tested & source.identities)
        if leaked:
            shown = ", ".join(str(p) for p in leaked[:_MAX_LISTED])
            more = ", ..." if len(leaked) > _MAX_LISTED else ""
            raise IdentityLeakError(
                f"{source.dataset}: test setting {setting.group}/trial {setting.trial} under "
                f"{setting.split.root} holds {len(leaked)} identities the model was trained "
                f"on ({shown}{more}); the training and test identities must be disjoint"
            )


def _same_root(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def check_trained_on(dataset_cfg: Any, settings: Sequence[TestSetting]) -> None:
    """`check_disjoint` for a model trained with this ``dataset`` config. A training root
    that none of the settings reads (another dataset, or a checkpoint from another machine)
    is not opened."""
    root = dataset_root(dataset_cfg)
    if any(_same_root(s.split.root, root) for s in settings):
        check_disjoint(TrainingSource.from_config(dataset_cfg), settings)
