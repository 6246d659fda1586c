"""partition_sites: site names, modalities, disjointness, coverage and determinism."""

from __future__ import annotations

from pathlib import Path

import pytest

from ppa.data import sysu
from ppa.data.partition import EmptySiteError, Site, partition_sites
from ppa.data.records import Modality, TrainRecord
from ppa.data.splits import TrainSet


def sysu_set(num_ids=10, cams=range(1, 7), per_cam=2) -> TrainSet:
    records = [
        TrainRecord(f"cam{cam}/{pid:04d}/{i:04d}.jpg", pid, cam, sysu.camera_modality(cam), label)
        for label, pid in enumerate(range(100, 100 + num_ids))
        for cam in cams
        for i in range(per_cam)
    ]
    return TrainSet(Path("root"), records, num_ids, {100 + k: k for k in range(num_ids)})


def regdb_set(num_ids=6) -> TrainSet:
    records = [
        TrainRecord(f"{folder}/{label}/{i}.bmp", label + 7, cam, modality, label)
        for cam, modality, folder in (
            (1, Modality.VISIBLE, "Visible"),
            (2, Modality.INFRARED, "Thermal"),
        )
        for label in range(num_ids)
        for i in range(3)
    ]
    return TrainSet(Path("root"), records, num_ids, {k + 7: k for k in range(num_ids)})


def test_sysu_by_camera_six_sites():
    train = sysu_set()
    sites = partition_sites(train, "by_camera", protocol="sysu")
    assert [s.name for s in sites] == ["cam1", "cam2", "cam3", "cam4", "cam5", "cam6"]
    assert [s.modality for s in sites] == [
        Modality.VISIBLE,
        Modality.VISIBLE,
        Modality.INFRARED,
        Modality.VISIBLE,
        Modality.VISIBLE,
        Modality.INFRARED,
    ]
    for site in sites:
        cam = int(site.name[3:])
        assert len(site) == 10 * 2 and {r.cam for r in site.records} == {cam}
        assert {r.modality for r in site.records} == {site.modality}
    assert sorted(r for s in sites for r in s.records) == sorted(train.records)


def test_regdb_by_camera_and_by_modality():
    train = regdb_set()
    sites = partition_sites(train, "by_camera", protocol="regdb")
    assert [(s.name, s.modality, len(s)) for s in sites] == [
        ("thermal", Modality.INFRARED, 18),
        ("visible", Modality.VISIBLE, 18),
    ]
    by_mod = partition_sites(train, "by_modality", protocol="regdb")
    assert [(s.name, s.modality, len(s)) for s in by_mod] == [
        ("infrared", Modality.INFRARED, 18),
        ("visible", Modality.VISIBLE, 18),
    ]
    assert {r.cam for r in by_mod[0].records} == {2}


def test_sysu_by_modality():
    sites = partition_sites(sysu_set(), "by_modality", protocol="sysu")
    assert [(s.name, len(s)) for s in sites] == [("infrared", 40), ("visible", 80)]
    assert {r.cam for r in sites[0].records} == {3, 6}


@pytest.mark.parametrize("alpha", [None, 0.3])
def test_by_identity_disjoint_groups_shared_across_modalities(alpha):
    train = sysu_set(num_ids=20)
    sites = partition_sites(
        train, "by_identity", protocol="sysu", sites_per_modality=3, dirichlet_alpha=alpha, seed=4
    )
    assert [s.name for s in sites] == [
        "infrared-0",
        "infrared-1",
        "infrared-2",
        "visible-0",
        "visible-1",
        "visible-2",
    ]
    by_name = {s.name: s for s in sites}
    groups = []
    for g in range(3):
        visible, infrared = by_name[f"visible-{g}"], by_name[f"infrared-{g}"]
        assert visible.modality is Modality.VISIBLE and infrared.modality is Modality.INFRARED
        assert {r.modality for r in visible.records} == {Modality.VISIBLE}
        assert {r.modality for r in infrared.records} == {Modality.INFRARED}
        assert visible.labels == infrared.labels  # same grouping for both modalities
        assert len(visible.labels) >= 2
        groups.append(set(visible.labels))
    assert groups[0].isdisjoint(groups[1]) and groups[1].isdisjoint(groups[2])
    assert set().union(*groups) == set(range(20))
    assert sorted(r for s in sites for r in s.records) == sorted(train.records)
    if alpha is None:
        assert sorted(len(g) for g in groups) == [6, 7, 7]


def test_by_identity_is_deterministic_for_the_seed():
    train = sysu_set(num_ids=30)

    def labels(seed, alpha):
        sites = partition_sites(
            train,
            "by_identity",
            protocol="sysu",
            sites_per_modality=4,
            dirichlet_alpha=alpha,
            seed=seed,
        )
        return [s.labels for s in sites]

    assert labels(1, None) == labels(1, None)
    assert labels(1, 0.5) == labels(1, 0.5)
    assert labels(1, None) != labels(2, None)
    assert labels(1, 0.5) != labels(2, 0.5)


def test_dirichlet_skew_keeps_two_ids_per_site():
    train = sysu_set(num_ids=40)
    sizes = set()
    for seed in range(20):
        sites = partition_sites(
            train,
            "by_identity",
            protocol="sysu",
            sites_per_modality=4,
            dirichlet_alpha=0.05,
            seed=seed,
        )
        counts = [len(s.labels) for s in sites if s.modality is Modality.VISIBLE]
        assert min(counts) >= 2 and sum(counts) == 40
        sizes.add(tuple(sorted(counts)))
    # A small alpha gives very unequal groups (equal would be 10 each).
    assert any(max(s) >= 25 for s in sizes)


def test_empty_sites_are_named():
    no_cam4 = sysu_set(cams=(1, 2, 3, 5, 6))
    with pytest.raises(EmptySiteError, match="'cam4'"):
        partition_sites(no_cam4, "by_camera", protocol="sysu")
    visible_only = sysu_set(cams=(1, 2))
    with pytest.raises(EmptySiteError, match="'infrared'"):
        partition_sites(visible_only, "by_modality", protocol="sysu")
    with pytest.raises(EmptySiteError, match="'infrared-0'"):
        partition_sites(visible_only, "by_identity", protocol="sysu")


def test_bad_arguments():
    train = sysu_set(num_ids=5)
    with pytest.raises(ValueError, match="by_site"):
        partition_sites(train, "by_site", protocol="sysu")
    with pytest.raises(ValueError, match="protocol"):
        partition_sites(train, "by_camera", protocol="market")
    with pytest.raises(ValueError, match="at least 6 identities"):
        partition_sites(train, "by_identity", protocol="sysu", sites_per_modality=3)
    with pytest.raises(ValueError, match="dirichlet_alpha"):
        partition_sites(train, "by_identity", protocol="sysu", dirichlet_alpha=0.0)
    with pytest.raises(ValueError, match="has camera 3, not a regdb camera"):
        partition_sites(sysu_set(), "by_camera", protocol="regdb")
    assert isinstance(partition_sites(train, "by_modality", protocol="sysu")[0], Site)


def test_names_keep_only_the_requested_sites_of_a_partial_root():
    # A deployment node for cam3 holds only cam3 images: the other sites are empty there.
    cam3_only = sysu_set(cams=(3,))
    with pytest.raises(EmptySiteError, match="'cam1'"):
        partition_sites(cam3_only, "by_camera", protocol="sysu")
    (site,) = partition_sites(cam3_only, "by_camera", protocol="sysu", names=["cam3"])
    assert site.name == "cam3" and site.modality is Modality.INFRARED and len(site) == 20
    with pytest.raises(ValueError, match="no site"):
        partition_sites(cam3_only, "by_camera", protocol="sysu", names=["cam9"])
    with pytest.raises(EmptySiteError, match="'cam4'"):
        partition_sites(cam3_only, "by_camera", protocol="sysu", names=["cam3", "cam4"])


def test_by_identity_groups_agree_between_full_and_partial_training_sets():
    full = sysu_set(num_ids=12)
    # A visible node that lacks some identities entirely still gets the same groups.
    partial = sysu_set(num_ids=12, cams=(1, 2))
    partial.records = [r for r in partial.records if r.label not in (0, 5)]
    kwargs = {"protocol": "sysu", "sites_per_modality": 3, "dirichlet_alpha": 1.0, "seed": 9}
    everywhere = {s.name: set(s.labels) for s in partition_sites(full, "by_identity", **kwargs)}
    names = ["visible-0", "visible-1", "visible-2"]
    for site in partition_sites(partial, "by_identity", names=names, **kwargs):
        assert set(site.labels) == everywhere[site.name] - {0, 5}
