"""The privacy numbers of ppa-evaluate measure both modalities and say how many of each."""

from __future__ import annotations

from ppa.anonymize.report import sample_by_modality
from ppa.data.records import ImageRecord, Modality


def records(infrared: int, visible: int) -> list[ImageRecord]:
    # SYSU's order: every infrared query first, then the visible gallery.
    ir = [ImageRecord(f"ir/{i}.jpg", i, 3, Modality.INFRARED) for i in range(infrared)]
    vis = [ImageRecord(f"vis/{i}.jpg", i, 1, Modality.VISIBLE) for i in range(visible)]
    return ir + vis


def count(picked: list[ImageRecord]) -> dict[str, int]:
    return {m.value: sum(r.modality == m for r in picked) for m in Modality}


def test_half_of_each_modality_spread_over_the_list() -> None:
    picked = sample_by_modality(records(300, 500), 256)
    assert count(picked) == {"visible": 128, "infrared": 128}
    assert len({r.path for r in picked}) == 256
    ir = [int(r.path[3:-4]) for r in picked if r.modality == Modality.INFRARED]
    assert ir[0] == 0 and ir[-1] == 299  # evenly over the whole list, not its head


def test_a_short_modality_is_filled_up_by_the_other() -> None:
    assert count(sample_by_modality(records(10, 500), 256)) == {"visible": 246, "infrared": 10}
    assert count(sample_by_modality(records(0, 20), 256)) == {"visible": 20, "infrared": 0}
    assert count(sample_by_modality(records(40, 40), 7)) == {"visible": 4, "infrared": 3}
    assert sample_by_modality(records(5, 5), 0) == []
