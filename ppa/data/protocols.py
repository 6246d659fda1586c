"""The dataset protocol registry: ``dataset.protocol`` -> a `DatasetProtocol` object.

A protocol reads its family's training set and label space, lists the test settings to
evaluate, lays out its camera sites and names its retrieval rule. Everything downstream sees
`TrainSet`, `TestSplit`, `TestSetting` and the protocol object only; a new family is one
`register_protocol` call.
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

@dataclass(frozen=True)
class TestSetting:
    """One evaluation: a test split, its group (SYSU mode / RegDB direction) and trial."""

    __test__ = False  # not a pytest test class despite its name

    group: str
    trial: int
    split: TestSplit


class DatasetProtocol:
    """How one dataset family is read, split into camera sites and scored.

    Subclasses register themselves in `PROTOCOLS` under `name` (``dataset.protocol``).
    `metrics` names the retrieval rule of `ppa.eval.metrics` the family uses.
    """

    name: str
    metrics: str

    def load_train_set(
        self,
        dataset_cfg: Any,
        root: Path,
        *,
        modalities: set[Modality] | None,
        cameras: Sequence[int] | None,
        require_complete: bool,
    ) -> TrainSet:
        raise NotImplementedError

    def read_label_space(self, dataset_cfg: Any, root: Path) -> dict[int, int]:
        raise NotImplementedError

    def test_settings(self, dataset_cfg: Any, root: Path) -> list[TestSetting]:
        raise NotImplementedError

    def camera_sites(self) -> list[tuple[int, str, Modality]]:
        """(camera, site name, modality) of the by_camera partition, in camera order."""
        raise NotImplementedError

    def site_camera(self, site_name: str) -> int | None:
        """The camera whose images a by_camera site holds, when its root may hold only them."""
        return None


class SysuProtocol(DatasetProtocol):
    name = "sysu"
    metrics = "sysu"

    def load_train_set(self, dataset_cfg, root, *, modalities, cameras, require_complete):
        cams = sysu.CAMERAS if cameras is None else tuple(cameras)
        if modalities is not None:
            cams = tuple(c for c in cams if sysu.camera_modality(c) in modalities)
        restricted = cameras is not None or modalities is not None
        if restricted and not cams:
            raise ValueError(
                f"no SYSU-MM01 camera matches cameras={cameras!r} and modalities="
                f"{sorted(m.value for m in modalities) if modalities else modalities!r}"
            )
        return sysu.load_train_set(
            root, cameras=cams if restricted else None, require_all_ids=require_complete
        )

    def read_label_space(self, dataset_cfg, root):
        return sysu.read_label_space(root)

    def test_settings(self, dataset_cfg, root):
        settings: list[TestSetting] = []
        trials = _trials(_require(dataset_cfg, "test.trials"), first=0, key="test.trials")
        shots = int(_require(dataset_cfg, "test.shots"))
        for mode in _names(_require(dataset_cfg, "test.modes"), "test.modes"):
            splits = sysu.load_test_splits(root, mode=mode, trials=trials, shots=shots)
            settings.extend(
                TestSetting(mode, trial, split) for trial, split in zip(trials, splits, strict=True)
            )
        return settings

    def camera_sites(self):
        return [(c, sysu.camera_folder(c), sysu.camera_modality(c)) for c in sysu.CAMERAS]

    def site_camera(self, site_name):
        if site_name.startswith("cam") and site_name[3:].isdigit():
            return int(site_name[3:])
        return None


class RegdbProtocol(DatasetProtocol):
    name = "regdb"
    metrics = "regdb"

    def load_train_set(self, dataset_cfg, root, *, modalities, cameras, require_complete):
        wanted = modalities
        if cameras is not None:
            from_cams = {regdb.camera_modality(c) for c in cameras}
            wanted = from_cams if wanted is None else wanted & from_cams
            if not wanted:
                raise ValueError(
                    f"no RegDB modality matches cameras={cameras!r} and modalities="
                    f"{sorted(m.value for m in modalities) if modalities else modalities!r}"
                )
        trial = int(_require(dataset_cfg, "train_trial"))
        return regdb.load_train_set(
            root,
            trial=trial,
            modalities=None if wanted is None else sorted(wanted),
            require_all_files=require_complete,
        )

    def read_label_space(self, dataset_cfg, root):
        return regdb.read_label_space(root, int(_require(dataset_cfg, "train_trial")))

    def test_settings(self, dataset_cfg, root):
        trials = _trials(_require(dataset_cfg, "test.trials"), first=1, key="test.trials")
        return [
            TestSetting(direction, trial, regdb.load_test_split(root, trial, direction))
            for direction in _names(_require(dataset_cfg, "test.directions"), "test.directions")
            for trial in trials
        ]

    def camera_sites(self):
        cams = (regdb.VISIBLE_CAMERA, regdb.THERMAL_CAMERA)
        return [
            (c, regdb.FILE_TAG[regdb.camera_modality(c)], regdb.camera_modality(c)) for c in cams
        ]


PROTOCOLS: dict[str, DatasetProtocol] = {}


def register_protocol(protocol: DatasetProtocol) -> DatasetProtocol:
    """Make `protocol` selectable as ``dataset.protocol=<protocol.name>``."""
    PROTOCOLS[protocol.name] = protocol
    return protocol


register_protocol(SysuProtocol())
register_protocol(RegdbProtocol())


def get_protocol(name: str) -> DatasetProtocol:
    """The registered protocol called `name`; ValueError listing the valid names."""
    try:
        return PROTOCOLS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"dataset.protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}"
        ) from None


def dataset_root(dataset_cfg: Any) -> Path:
    """``dataset.root`` resolved with `ppa.config.resolve_path`."""
    return resolve_path(_require(dataset_cfg, "root"))


def dataset_protocol(dataset_cfg: Any) -> DatasetProtocol:
    """The protocol object of ``dataset.protocol``."""
    return get_protocol(_require(dataset_cfg, "protocol"))


def protocol_of(dataset_cfg: Any) -> str:
    """``dataset.protocol``, validated."""
    return dataset_protocol(dataset_cfg).name


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
    protocol = dataset_protocol(dataset_cfg)
    data_root = resolve_path(root) if root is not None else dataset_root(dataset_cfg)
    wanted = None if modalities is None else {Modality.parse(m) for m in modalities}
    return protocol.load_train_set(
        dataset_cfg,
        data_root,
        modalities=wanted,
        cameras=cameras,
        require_complete=require_complete,
    )


def load_label_space(dataset_cfg: Any, *, root: str | os.PathLike | None = None) -> dict[int, int]:
    """pid -> training label of the configured dataset, from its split/index files alone.

    What `load_train_set(...).pid_to_label` gives, without reading any image: enough for the
    server to size the shared classifier (``len(...)`` classes).
    """
    protocol = dataset_protocol(dataset_cfg)
    data_root = resolve_path(root) if root is not None else dataset_root(dataset_cfg)
    return protocol.read_label_space(dataset_cfg, data_root)


def test_settings(dataset_cfg: Any, *, root: str | os.PathLike | None = None) -> list[TestSetting]:
    """Every test split the config asks for, grouped by SYSU mode or RegDB direction.

    SYSU: groups ``test.modes``, trials 0..``test.trials``-1 (or the listed trials), gallery
    shots ``test.shots``. RegDB: groups ``test.directions``, trials ``test.trials`` (a list,
    or N for 1..N).
    """
    protocol = dataset_protocol(dataset_cfg)
    data_root = resolve_path(root) if root is not None else dataset_root(dataset_cfg)
    return protocol.test_settings(dataset_cfg, data_root)


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
