"""A public pretraining checkpoint as the start of a DP run: what the checkpoint records, the
disjointness check against every site's and the test identities, and loading the start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from ppa.checkpoint import load_checkpoint, save_checkpoint
from ppa.cli.train import train
from ppa.config import load_config
from ppa.data.protocols import load_train_set
from ppa.model import create_model
from ppa.public_start import (
    PROVENANCE_KEY,
    PublicStartError,
    check_public_start,
    identity_namespace,
    training_provenance,
)
from ppa.synthetic.writer import write_synthetic_sysu

from conftest import tiny_overrides

PUBLIC_SEED = 1000


@pytest.fixture(scope="module")
def public_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny public set: the synthetic writer with a seed of its own."""
    root = tmp_path_factory.mktemp("public") / "public_sysu"
    write_synthetic_sysu(
        root,
        num_train_ids=8,
        num_val_ids=1,
        num_test_ids=2,
        images_per_camera=2,
        image_height=64,
        image_width=32,
        camera_coverage=0.9,
        seed=PUBLIC_SEED,
    )
    return root


def _cfg(root: Path, tmp_path: Path, *extra: str, name: str = "synthetic_sysu") -> DictConfig:
    return load_config(tiny_overrides(root, tmp_path, f"dataset.name={name}", *extra))


def _start(cfg: DictConfig, path: Path, record: dict | None) -> Path:
    """A checkpoint of `cfg`'s model with the given training_data record (None: none)."""
    model = create_model(cfg.model, len(load_train_set(cfg.dataset).pid_to_label))
    extra = {} if record is None else {PROVENANCE_KEY: record}
    return save_checkpoint(path, model, cfg, **extra)


def test_central_training_records_what_it_was_trained_on(public_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        public_root,
        tmp_path,
        "train.epochs=1",
        "train.max_batches_per_epoch=1",
        "train.checkpoint_every=0",
        name="synthetic_public",
    )
    last = train(cfg)
    record = load_checkpoint(last)[PROVENANCE_KEY]
    train_set = load_train_set(cfg.dataset)
    assert record["identities"] == sorted({r.pid for r in train_set.records})
    # Who the persons are comes from the writer's manifest (its seed), not the config name.
    assert record["identity_namespace"] == f"synthetic_sysu/seed={PUBLIC_SEED}"
    assert record["dataset"] == "synthetic_public" and record["root"] == str(public_root)
    assert len(record["config_sha256"]) == 64


def test_a_disjoint_public_start_is_accepted_and_loaded(
    public_root: Path, tiny_sysu_root: Path, tmp_path: Path
) -> None:
    public = _cfg(public_root, tmp_path / "p", name="synthetic_public")
    record = training_provenance(public.dataset, load_train_set(public.dataset))
    path = _start(public, tmp_path / "public.pt", record)
    # The pretrained public pids overlap the private pids as integers (both count from 1),
    # but they are other persons: another writer seed.
    private = _cfg(tiny_sysu_root, tmp_path / "q", f"model.pretrained_path={path}")
    private_pids = set(load_train_set(private.dataset).pid_to_label)
    assert set(record["identities"]) & private_pids
    assert check_public_start(private) == record
    assert check_public_start(private, site="cam1", site_pids=private_pids) == record
    # create_model starts every weight but the classifier (its rows are other identities).
    model = create_model(private.model, len(private_pids))
    saved = load_checkpoint(path)["state_dict"]
    for name, value in model.state_dict().items():
        if name == "classifier.weight":
            assert value.shape[0] == len(private_pids) != saved[name].shape[0]
        else:
            torch.testing.assert_close(value, saved[name], msg=name)


def test_a_start_with_shared_statistics_seeds_each_modality_of_a_split_trunk(
    public_root: Path, tiny_sysu_root: Path, tmp_path: Path
) -> None:
    public = _cfg(public_root, tmp_path / "p", "model.trunk_stats=shared", name="synthetic_public")
    record = training_provenance(public.dataset, load_train_set(public.dataset))
    path = _start(public, tmp_path / "public.pt", record)
    saved = load_checkpoint(path)["state_dict"]
    # Make the shared statistics recognisable (a fresh model holds zeros and ones).
    for key in [k for k in saved if k.endswith(("running_mean", "running_var"))]:
        saved[key] = torch.rand_like(saved[key]) + 0.5
    payload = load_checkpoint(path)
    payload["state_dict"] = saved
    torch.save(payload, path)
    private = _cfg(
        tiny_sysu_root,
        tmp_path / "q",
        "model.trunk_stats=modality",
        f"model.pretrained_path={path}",
    )
    model = create_model(private.model, len(load_train_set(private.dataset).pid_to_label))
    state = model.state_dict()
    split = [k for k in state if ".stats.visible.running_mean" in k and k.startswith("trunk.")]
    assert split
    for key in split:
        shared = key.replace(".stats.visible.", ".")
        for modality in ("visible", "infrared"):
            mine = key.replace(".visible.", f".{modality}.")
            torch.testing.assert_close(state[mine], saved[shared], msg=mine)
            torch.testing.assert_close(
                state[mine.replace("running_mean", "running_var")],
                saved[shared.replace("running_mean", "running_var")],
            )
    # Everything else (affine included) comes from the start unchanged.
    weight = split[0].replace(".stats.visible.running_mean", ".weight")
    torch.testing.assert_close(state[weight], saved[weight])


def test_a_start_sharing_training_identities_is_refused_naming_both_sets(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    # "Public" data written with the private set's seed: the same persons. Renaming the
    # dataset in the config does not hide it (the namespace is the writer's seed).
    clone = tmp_path / "clone"
    write_synthetic_sysu(
        clone,
        num_train_ids=5,
        num_val_ids=1,
        num_test_ids=1,
        images_per_camera=1,
        image_height=64,
        image_width=32,
        camera_coverage=0.9,
        seed=0,
    )
    fake = _cfg(clone, tmp_path / "c", name="totally_public")
    record = training_provenance(fake.dataset, load_train_set(fake.dataset))
    path = _start(fake, tmp_path / "clone.pt", record)
    private = _cfg(tiny_sysu_root, tmp_path / "q", f"model.pretrained_path={path}")
    assert identity_namespace(private.dataset) == record["identity_namespace"]
    with pytest.raises(PublicStartError) as err:
        check_public_start(private)
    message = str(err.value)
    assert f"public pretraining set totally_public at {clone}" in message
    assert f"training identities of dataset synthetic_sysu at {tiny_sysu_root}" in message
    # A site checks its own records the same way.
    site_pids = set(load_train_set(private.dataset).pid_to_label) & set(record["identities"])
    with pytest.raises(PublicStartError, match="site cam3's identities"):
        check_public_start(private, site="cam3", site_pids=site_pids)


def test_a_start_holding_test_identities_is_refused(tiny_sysu_root: Path, tmp_path: Path) -> None:
    private = _cfg(tiny_sysu_root, tmp_path / "q")
    train_pids = set(load_train_set(private.dataset).pid_to_label)
    test_pids = [int(p) for p in (tiny_sysu_root / "exp" / "test_id.txt").read_text().split(",")]
    assert not train_pids & set(test_pids)
    record = {
        "dataset": "leaky",
        "root": str(tiny_sysu_root),
        "config_sha256": "0" * 64,
        "identity_namespace": identity_namespace(private.dataset),
        "identities": test_pids[:2],
    }
    path = _start(private, tmp_path / "leaky.pt", record)
    cfg = _cfg(tiny_sysu_root, tmp_path / "r", f"model.pretrained_path={path}")
    with pytest.raises(PublicStartError, match=r"2 identities with the test identities of"):
        check_public_start(cfg)


def test_a_start_without_a_record_is_refused_and_the_server_checks(
    tiny_sysu_root: Path, tmp_path: Path
) -> None:
    from server.run import FederatedRun

    plain = _cfg(tiny_sysu_root, tmp_path / "q")
    path = _start(plain, tmp_path / "anonymous.pt", None)
    cfg = _cfg(tiny_sysu_root, tmp_path / "r", "privacy=dp", f"model.pretrained_path={path}")
    with pytest.raises(PublicStartError, match="records no training data"):
        check_public_start(cfg)
    with pytest.raises(PublicStartError, match="records no training data"):
        FederatedRun(cfg)
    assert check_public_start(plain) is None  # no start: nothing to check


def test_the_shifted_public_set_is_another_domain_and_another_namespace() -> None:
    """dataset=synthetic_public_shifted: the public set's size, other writer settings and a
    seed of its own, so its identity namespace is neither the sites' nor synthetic_public's."""
    public = load_config(["dataset=synthetic_public"]).dataset
    shifted = load_config(["dataset=synthetic_public_shifted"]).dataset
    private = load_config(["dataset=synthetic_sysu"]).dataset
    assert shifted.synthetic.num_train_ids == public.synthetic.num_train_ids
    assert len({public.synthetic.seed, shifted.synthetic.seed, private.synthetic.seed}) == 3
    assert shifted.synthetic.infrared_luminance < private.synthetic.infrared_luminance
    assert shifted.synthetic.view_jitter > 0.28 and shifted.synthetic.clutter_max > 2
    assert shifted.root != public.root
