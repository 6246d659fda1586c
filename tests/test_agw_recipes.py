"""The real-data recipes: epoch length, channel augmentation, the ResNet-50 weights tag, and
one training step of experiment=sysu_agw / regdb_agw on the synthetic sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf

from ppa.checkpoint import load_checkpoint
from ppa.cli.train import train
from ppa.config import load_config
from ppa.data.channel_augment import ChannelAugment
from ppa.data.epoch_length import batches_per_epoch
from ppa.data.loader import create_train_loader
from ppa.data.protocols import load_train_set
from ppa.data.transforms import ReidTransform, build_train_transform
from ppa.model.encoder import create_backbone

# Epoch length ------------------------------------------------------------------------------


def test_epoch_length_by_hand() -> None:
    modalities = ["visible"] * 100 + ["infrared"] * 40
    assert batches_per_epoch(modalities, 4, 2, "agw") == 100 // 8
    assert batches_per_epoch(modalities, 4, 2, "records") is None
    assert batches_per_epoch(["infrared"] * 5, 4, 2, "agw") == 1  # at least one batch
    with pytest.raises(ValueError, match=r"train\.epoch_length must be one of"):
        batches_per_epoch(modalities, 4, 2, "pass")


def test_loader_follows_the_configured_epoch_length(tiny_sysu_root: Path) -> None:
    cfg = load_config(
        [f"dataset.root={tiny_sysu_root}", "train.num_ids=2", "train.num_instances=2"]
    )
    train_set = load_train_set(cfg.dataset)
    counts = {
        m: sum(r.modality is m for r in train_set.records)
        for m in {r.modality for r in train_set.records}
    }
    lengths = {}
    for rule in ("records", "agw"):
        cfg.train.epoch_length = rule
        loader = create_train_loader(
            train_set.records,
            train_set.root,
            input_cfg=cfg.input,
            train_cfg=cfg.train,
            pose_cfg=cfg.pose,
            keypoints=None,
            seed=0,
        )
        lengths[rule] = len(loader)
    assert lengths["records"] == len(train_set.records) // (2 * 2 * 2)
    assert lengths["agw"] == max(counts.values()) // (2 * 2)
    assert lengths["agw"] > lengths["records"]


# Channel augmentation ----------------------------------------------------------------------


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(32, 16, 3), dtype=np.uint8)


def test_random_channel_copies_one_channel_to_all_three() -> None:
    image = _image()
    seen = set()
    for seed in range(20):
        out = ChannelAugment(random_channel=1.0)(image, np.random.default_rng(seed))
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
        seen.add(next(c for c in range(3) if np.array_equal(out[..., 0], image[..., c])))
    assert seen == {0, 1, 2}
    assert image.flags.writeable and not np.array_equal(image[..., 0], image[..., 1])


def test_random_erasing_fills_a_rectangle_with_the_mean() -> None:
    image = _image(1)
    augment = ChannelAugment(random_erasing=1.0)
    out = augment(image, np.random.default_rng(3))
    fill = np.rint(np.asarray(augment.fill) * 255).astype(np.uint8)
    erased = (out == fill).all(axis=2) & (out != image).any(axis=2)
    rows, cols = np.nonzero((out != image).any(axis=2))
    assert erased.sum() == len(rows) > 0
    # One rectangle, 2-40 % of the image.
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert (out[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] == fill).all()
    assert 0.02 * 32 * 16 * 0.5 <= box <= 0.4 * 32 * 16 * 1.5
    # Same seed, same image.
    assert np.array_equal(out, augment(image, np.random.default_rng(3)))


def test_switched_off_augmentation_draws_nothing() -> None:
    """A config without the new keys (the demo) keeps its random stream, so its numbers."""
    cfg = load_config([])
    assert "random_channel" not in cfg.train.augment
    built = build_train_transform(cfg.input, cfg.train.augment)
    plain = ReidTransform(
        height=built.height, width=built.width, pad=built.pad, flip=built.flip, grayscale=0.5
    )
    image, points = _image(2), np.zeros((17, 3), dtype=np.float32)
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    out_a, _ = built(image, points, a)
    out_b, _ = plain(image, points, b)
    assert torch.equal(out_a, out_b) and a.random() == b.random()


def test_channel_augment_checks_its_settings() -> None:
    with pytest.raises(ValueError, match=r"train\.augment\.random_erasing"):
        ChannelAugment(random_erasing=1.5)


# The ResNet-50 weights tag -----------------------------------------------------------------


def test_resnet50_names_the_torchvision_weights_and_loads_a_local_file(tmp_path: Path) -> None:
    model_cfg = load_config(["model=resnet50"]).model
    assert model_cfg.arch == "resnet50.tv_in1k"
    # A weights file of that architecture, written here (no download).
    torch.manual_seed(0)
    source = timm.create_model("resnet50", pretrained=False)
    path = tmp_path / "resnet50_tv_in1k.pth"
    torch.save(source.state_dict(), path)
    backbone = create_backbone(
        model_cfg.arch,
        pretrained=True,
        pretrained_path=str(path),
        arch_kwargs={},
        last_stride=1,
    )
    assert backbone.pretrained_cfg["architecture"] == "resnet50"
    assert backbone.pretrained_cfg["tag"] == "tv_in1k"
    assert backbone.pretrained_cfg["file"] == str(path)
    assert torch.equal(backbone.conv1.weight, source.conv1.weight)
    assert torch.equal(backbone.layer4[2].conv3.weight, source.layer4[2].conv3.weight)
    assert backbone.layer4[0].conv2.stride == (1, 1)  # last stride 1


# One step of each real recipe on the synthetic sets ----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["sysu_agw", "regdb_agw"])
def test_recipe_trains_one_step(
    experiment: str, tiny_sysu_root: Path, tiny_regdb_root: Path, tmp_path: Path
) -> None:
    root = tiny_sysu_root if experiment == "sysu_agw" else tiny_regdb_root
    cfg = load_config(
        [
            f"experiment={experiment}",
            f"dataset.root={root}",
            f"output_dir={tmp_path / 'out'}",
            "model.pretrained=false",  # no download; the weights tag is tested above
            # The recipe as it is, but a 2 x 2 batch so one ResNet-50 step fits a test on a CPU.
            "train.num_ids=2",
            "train.num_instances=2",
            "train.epochs=1",
            "train.max_batches_per_epoch=1",
            "train.num_workers=0",
            "train.checkpoint_every=0",
            "device=cpu",
        ]
    )
    last = train(cfg)
    payload = load_checkpoint(last)
    trained = OmegaConf.create(payload["config"])
    assert trained.model.arch == "resnet50.tv_in1k"
    assert (trained.input.height, trained.input.width) == (288, 144)
    assert trained.train.epoch_length == "agw"
    assert trained.train.augment.random_erasing == 0.5
    history = payload["history"]
    assert history[0]["batches"] == 1 and np.isfinite(history[0]["loss"])
    assert history[0]["num_examples"] == 2 * 2 * 2
