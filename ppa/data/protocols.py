"""Dataset config (``cfg.dataset``) -> training set and the list of test settings to evaluate.

The one place that dispatches on ``dataset.protocol``; everything downstream sees `TrainSet`,
`TestSplit` and `TestSetting` only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppa.config import resolve_path
from ppa.data import regdb, sysu
from ppa.data.records import Modality
from ppa.data.splits import TestSplit, TrainSet

PROTOCOLS: tuple[str, ...] = ("sysu", "regdb")


@dataclass(frozen=True)
class TestSetting:
    """One evaluation: a test split, its group (SYSU mode / RegDB direction) and trial."""

    __test__ = False  # not a pytest test class despite its name

    group: str
    trial: int
    split: TestSplit


def dataset_root(dataset_cfg: Any) -> Path:
    """``dataset.root`` resolved with `ppa.config.resolve_path`."""
    return resolve_path(_require(dataset_cfg, "root"))


def protocol_of(dataset_cfg: Any) -> str:
    """``dataset.protocol``, validated."""
    protocol = _require(dataset_cfg, "protocol")
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"dataset.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
        )
    return protocol


def load_train_set(
    dataset_cfg: Any,
    *,
    root: str | os.PathLike | None = None,
    modalities: Sequence[Modality | str] | None = None,
    cameras: Sequence[int] | None = None,
    require_complete: bool = True,
) -> TrainSet:
    """Training set of the configured dataset (RegDB: the train split of ``train_trial``).

    `root` overrides ``dataset.root`` (a site's own data path). `modalities` / `cameras`
    restrict the images read (a site's root may hold only its own cameras); with
    ``require_complete=False`` identities or listed files absent from the root are allowed.
    Labels always come from the split/index files, so every site agrees on them.
    """
    protocol = protocol_of(dataset_cfg)
    data_root = resolve_path(root) if root is not None else dataset_root(dataset_cfg)
    wanted = None if modalities is None else {Modality.parse(m) for m in modalities}
    if protocol == "sysu":
        cams = sysu.CAMERAS if cameras is None else tuple(cameras)
        if wanted is not None:
            cams = tuple(c for c in cams if sysu.camera_modality(c) in wanted)
        restricted = cameras is not None or wanted is not None
        if restricted and not cams:
            raise ValueError(
                f"no SYSU-MM01 camera matches cameras={cameras!r} and modalities={modalities!r}"
            )
        return sysu.load_train_set(
            data_root, cameras=cams if restricted else None, require_all_ids=require_complete
        )
    if cameras is not None:
        from_cams = {regdb.camera_modality(c) for c in cameras}
        wanted = from_cams if wanted is None else wanted & from_cams
        if not wanted:
            raise ValueError(
                f"no RegDB modality matches cameras={cameras!r} and modalities={modalities!r}"
            )
    trial = int(_require(dataset_cfg, "train_trial"))
    return regdb.load_train_set(
        data_root,
        trial=trial,
        modalities=None if wanted is None else sorted(wanted),
        require_all_files=require_complete,
    )


def load_label_space(dataset_cfg: Any, *, root: str | os.PathLike | None = None) -> dict[int, int]:
    """pid -> training label of the configured dataset, from its split/index files alone.

    What `load_train_set(...).pid_to_label` gives, without reading any image: enough for the
    server to size the shared classifier (``len(...)`` classes).
    """
    protocol = protocol_of(dataset_cfg)
    data_root = resolve_path(root) if root is not None else dataset_root(dataset_cfg)
    if protocol == "sysu":
        return sysu.read_label_space(data_root)
    return regdb.read_label_space(data_root, int(_require(dataset_cfg, "train_trial")))


def test_settings(dataset_cfg: Any, *, root: str | os.PathLike | None = None) -> list[TestSetting]:
    """Every test split the config asks for, grouped by SYSU mode or RegDB direction.

    SYSU: groups ``test.modes``, trials 0..``test.trials``-1 (or the listed trials), gallery
    shots ``test.shots``. RegDB: groups ``test.directions``, trials ``test.trials`` (a list,
    or N for 1..N).
    """
    protocol = protocol_of(dataset_cfg)
    data_root = resolve_path(root) if root is not None else dataset_root(dataset_cfg)
    settings: list[TestSetting] = []
    if protocol == "sysu":
        trials = _trials(_require(dataset_cfg, "test.trials"), first=0, key="test.trials")
        shots = int(_require(dataset_cfg, "test.shots"))
        for mode in _names(_require(dataset_cfg, "test.modes"), "test.modes"):
            splits = sysu.load_test_splits(data_root, mode=mode, trials=trials, shots=shots)
            settings.extend(
                TestSetting(mode, trial, split) for trial, split in zip(trials, splits, strict=True)
            )
        return settings
    trials = _trials(_require(dataset_cfg, "test.trials"), first=1, key="test.trials")
    for direction in _names(_require(dataset_cfg, "test.directions"), "test.directions"):
        settings.extend(
            TestSetting(direction, trial, regdb.load_test_split(data_root, trial, direction))
            for trial in trials
        )
    return settings


def _require(cfg: Any, dotted: str) -> Any:
    """Value at a dotted key of a DictConfig/mapping; KeyError naming ``dataset.<key>``."""
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            raise KeyError(f"missing config key dataset.{dotted}") from None
        if node is None:
            raise KeyError(f"config key dataset.{dotted} is null")
    return node


def _trials(value: Any, *, first: int, key: str) -> list[int]:
    if isinstance(value, bool):
        raise ValueError(f"dataset.{key} must be a count or a list of trials, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"dataset.{key} must be >= 1, got {value}")
        return list(range(first, first + value))
    trials = [int(t) for t in value]
    if not trials:
        raise ValueError(f"dataset.{key} is empty")
    return trials


def _names(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    names = [str(v) for v in value]
    if not names:
        raise ValueError(f"dataset.{key} is empty")
    return names
