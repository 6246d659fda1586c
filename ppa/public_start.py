"""A public pretraining checkpoint as the start of a run, and the check that it is public.

Differentially private training only learns on top of good features (docs/privacy.md, "Public
pretraining"), so a DP run starts from a checkpoint trained on *public* data:
``model.pretrained_path`` names a PPA checkpoint (``ppa.checkpoint`` format) whose encoder
weights replace the fresh ones (the classifier is re-initialised: its rows are the public
identities). That the data was public is a checked fact, not a convention:

- every central training checkpoint records what it was trained on (``training_data``):
  the dataset's name, root, a fingerprint of its config, the identity namespace and the
  identity ids of the records it read (`training_provenance`);
- the identity namespace says who a person *is*. A synthetic person is a function of the
  writer's seed and its identity id (``ppa.synthetic``), so the namespace of a synthetic
  root is read from its manifest (``synthetic_sysu/seed=1000``), never from a config name; a
  real dataset's namespace is its ``dataset.name``;
- before training, `check_public_start` refuses a start checkpoint that records no training
  data, or whose identities meet the run's training identities (the label space every site
  draws from, or one site's own records) or its test identities, naming both sets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ppa.data.protocols import dataset_root, load_label_space, test_settings
from ppa.data.splits import TrainSet
from ppa.synthetic.files import read_manifest

logger = logging.getLogger(__name__)

PROVENANCE_KEY = "training_data"
# ppa.checkpoint's format tag (that module imports ppa.model, which imports this one lazily).
CHECKPOINT_FORMAT = "ppa-checkpoint/1"
# The module whose state is tied to the training identities (the classifier, whatever its
# kind): not carried over to a run with other identities.
IDENTITY_BOUND = "classifier"
_SHOWN = 5


def is_identity_bound(key: str) -> bool:
    """Whether a state-dict key belongs to the identity classifier."""
    return key.split(".", 1)[0] == IDENTITY_BOUND


class PublicStartError(ValueError):
    """A start checkpoint that is not (provably) public for this run's data."""


def identity_namespace(dataset_cfg: Any, root: str | os.PathLike | None = None) -> str:
    """Who the ids of a dataset root are: ``<writer dataset>/seed=<seed>`` for a synthetic
    root (its manifest), else ``dataset.name``."""
    data_root = Path(root) if root is not None else dataset_root(dataset_cfg)
    manifest = read_manifest(data_root)
    if manifest is not None:
        seed = manifest.get("parameters", {}).get("seed")
        return f"{manifest.get('dataset', 'synthetic')}/seed={seed}"
    return str(dataset_cfg.name)


def config_fingerprint(dataset_cfg: Any) -> str:
    """sha256 of the resolved dataset config (what was asked for, next to what was read)."""
    node = (
        OmegaConf.to_container(dataset_cfg, resolve=True)
        if isinstance(dataset_cfg, DictConfig)
        else dict(dataset_cfg)
    )
    return hashlib.sha256(json.dumps(node, sort_keys=True, default=str).encode()).hexdigest()


def training_provenance(dataset_cfg: Any, train_set: TrainSet) -> dict[str, Any]:
    """The ``training_data`` record of a checkpoint trained on `train_set`."""
    return {
        "dataset": str(dataset_cfg.name),
        "root": str(train_set.root),
        "config_sha256": config_fingerprint(dataset_cfg),
        "identity_namespace": identity_namespace(dataset_cfg, train_set.root),
        "identities": sorted({int(r.pid) for r in train_set.records}),
    }


def identity_keys(namespace: str, pids: Iterable[int]) -> set[str]:
    return {f"{namespace}:{int(p)}" for p in pids}


def private_identity_sets(
    cfg: DictConfig, *, site: str | None = None, site_pids: Iterable[int] | None = None
) -> dict[str, set[str]]:
    """{description: identity keys} of what a run must not have pretrained on.

    Without `site`: the training label space (every site's identities are in it) and the
    test identities of ``cfg.dataset``. With `site` and `site_pids`: that site's own records.
    """
    ds = cfg.dataset
    namespace = identity_namespace(ds)
    where = f"dataset {ds.name} at {dataset_root(ds)} ({namespace})"
    if site is not None:
        return {f"site {site}'s identities in {where}": identity_keys(namespace, site_pids or [])}
    test_pids: set[int] = set()
    for setting in test_settings(ds):
        test_pids.update(r.pid for r in (*setting.split.query, *setting.split.gallery))
    return {
        f"training identities of {where}": identity_keys(namespace, load_label_space(ds)),
        f"test identities of {where}": identity_keys(namespace, test_pids),
    }


def read_start(path: str | os.PathLike) -> dict[str, Any] | None:
    """The payload of a PPA checkpoint at `path`, or None for another weights file (timm)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"model.pretrained_path not found: {file}")
    if file.suffix == ".safetensors":
        return None  # timm weights
    try:
        payload = torch.load(file, map_location="cpu", weights_only=False)
    except Exception:  # not a torch pickle: weights in another format, for timm to read
        return None
    if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT:
        return dict(payload)
    return None


def check_public_start(
    cfg: DictConfig, *, site: str | None = None, site_pids: Iterable[int] | None = None
) -> dict[str, Any] | None:
    """Refuse ``model.pretrained_path`` if it is a PPA checkpoint that overlaps this run's data.

    Returns the checkpoint's ``training_data`` record (None when there is no PPA start: no
    path, or a plain weights file such as timm's ImageNet weights, public by assumption).
    """
    path = cfg.model.get("pretrained_path")
    if not path:
        return None
    payload = read_start(path)
    if payload is None:
        return None
    record = payload.get(PROVENANCE_KEY)
    if not isinstance(record, Mapping) or "identities" not in record:
        raise PublicStartError(
            f"model.pretrained_path={path} records no training data ({PROVENANCE_KEY}): "
            "nothing shows it was trained on public identities; pretrain with "
            "ppa-train, which records them"
        )
    public = identity_keys(str(record["identity_namespace"]), record["identities"])
    name = (
        f"public pretraining set {record['dataset']} at {record['root']} "
        f"({record['identity_namespace']}, {len(public)} identities)"
    )
    for what, keys in private_identity_sets(cfg, site=site, site_pids=site_pids).items():
        shared = sorted(public & keys)
        if shared:
            raise PublicStartError(
                f"model.pretrained_path={path} was trained on the {name}, which shares "
                f"{len(shared)} identities with the {what}: {shared[:_SHOWN]}"
                f"{'...' if len(shared) > _SHOWN else ''}; a DP run may only start from "
                "data disjoint from every site and the test set"
            )
    logger.info("public start %s: %s, disjoint from this run's identities", path, name)
    return dict(record)
