"""Channel augmentation and infrared-like views: output channels checked by hand."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ppa.data.channel_views import (
    channel_exchange,
    channel_random_erasing,
    random_channel,
    single_channel_views,
)
from ppa.data.loader import Batch
from ppa.data.records import Modality
from ppa.training.pseudo_infrared import PseudoInfraredViews

VIS, IR = Modality.VISIBLE.index, Modality.INFRARED.index


def _pixel(r: float, g: float, b: float) -> torch.Tensor:
    return torch.tensor([r, g, b]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()


def test_single_channel_views_by_hand():
    images = torch.cat([_pixel(0.2, 0.6, 1.0)] * 4)
    out = single_channel_views(images, torch.tensor([0, 1, 2, 3]))
    luma = 0.299 * 0.2 + 0.587 * 0.6 + 0.114 * 1.0
    for i, value in enumerate((0.2, 0.6, 1.0, luma)):
        assert torch.allclose(out[i], torch.full((3, 2, 2), value)), i
    assert torch.equal(images, torch.cat([_pixel(0.2, 0.6, 1.0)] * 4))  # input untouched


def test_random_channel_and_exchange_pick_from_their_choices():
    images = torch.cat([_pixel(0.1, 0.5, 0.9)] * 64)
    gen = torch.Generator().manual_seed(3)
    picked = {round(float(v), 4) for v in random_channel(images, gen)[:, 0, 0, 0]}
    assert picked == {0.1, 0.5, 0.9}
    luma = round(0.299 * 0.1 + 0.587 * 0.5 + 0.114 * 0.9, 4)
    out = channel_exchange(images, torch.Generator().manual_seed(3))
    assert {round(float(v), 4) for v in out[:, 0, 0, 0]} == {0.1, 0.5, 0.9, luma}
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    again = channel_exchange(images, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


def test_channel_random_erasing_fills_one_rectangle():
    images = torch.zeros(6, 3, 16, 8)
    gen = torch.Generator().manual_seed(0)
    out = channel_random_erasing(images, gen, probability=1.0, fill=(0.25, 0.5, 0.75))
    for i in range(6):
        changed = (out[i] != 0).any(dim=0)
        rows, cols = torch.nonzero(changed, as_tuple=True)
        assert rows.numel() > 0
        box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert bool(box.all())  # one filled rectangle
        assert torch.allclose(out[i, :, rows[0], cols[0]], torch.tensor([0.25, 0.5, 0.75]))
    none = channel_random_erasing(images, gen, probability=0.0)
    assert torch.equal(none, images)
    with pytest.raises(ValueError, match="erasing probability"):
        channel_random_erasing(images, gen, probability=2.0)


def _batch(labels, modality) -> Batch:
    n = len(labels)
    images = torch.rand(n, 3, 4, 2, generator=torch.Generator().manual_seed(1))
    return Batch(
        images=images,
        keypoints=torch.zeros(n, 17, 3),
        labels=torch.tensor(labels),
        modality=torch.tensor(modality),
        cams=torch.zeros(n, dtype=torch.long),
        noise_keys=torch.zeros(n, 0, dtype=torch.uint8),
        indices=torch.arange(n),
    )


def test_pseudo_infrared_views_half_of_each_identity():
    batch = _batch([0, 0, 0, 0, 1, 1, 1, 1, 2, 2], [VIS] * 8 + [IR, IR])
    out = PseudoInfraredViews(0.5)(batch, torch.Generator().manual_seed(5))
    converted = out.modality != batch.modality
    # Two of each visible identity's four images become infrared; infrared ones stay.
    assert converted[:4].sum() == 2 and converted[4:8].sum() == 2 and not converted[8:].any()
    assert (out.modality[converted] == IR).all()
    for i in torch.nonzero(converted).flatten().tolist():
        img = out.images[i]
        assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
        src = batch.images[i]
        luma = 0.299 * src[0] + 0.587 * src[1] + 0.114 * src[2]
        assert any(torch.allclose(img[0], c) for c in (src[0], src[1], src[2], luma))
    kept = ~converted
    assert torch.equal(out.images[kept], batch.images[kept])
    assert torch.equal(out.labels, batch.labels)


def test_pseudo_infrared_config():
    off = OmegaConf.create({"pseudo_infrared": {"fraction": 0.0, "view": "channel_exchange"}})
    assert PseudoInfraredViews.from_config(off) is None
    assert PseudoInfraredViews.from_config(OmegaConf.create({})) is None
    on = OmegaConf.create({"pseudo_infrared": {"fraction": 0.25, "view": "random_channel"}})
    assert PseudoInfraredViews.from_config(on) == PseudoInfraredViews(0.25, "random_channel")
    with pytest.raises(ValueError, match=r"pseudo_infrared\.view"):
        PseudoInfraredViews(0.5, "sepia")


def test_step_context_takes_the_views_from_the_run_config():
    """Central training and every site build their context with StepContext.from_config, so
    `train.pseudo_infrared` reaches both."""
    from ppa.config import load_config
    from ppa.training.step import StepContext

    on = load_config(["train.pseudo_infrared.fraction=0.5"])
    ctx = StepContext.from_config(on, model=None, objective=None, anonymizer=None, device=None)
    assert ctx.batch_views == PseudoInfraredViews(0.5, "channel_exchange")
    off = StepContext.from_config(
        load_config([]), model=None, objective=None, anonymizer=None, device=None
    )
    assert off.batch_views is None
