"""DeviceSettings: what the config switches on, and what `place` does with it."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from ppa.device import DeviceSettings


def settings(**train) -> DeviceSettings:
    return DeviceSettings.from_config(OmegaConf.create({"device": "cpu", "train": train}))


def test_cpu_defaults_are_plain() -> None:
    device = settings(amp="auto", channels_last="auto")
    assert device.device == torch.device("cpu")
    assert device.amp_dtype is None and not device.channels_last and not device.compile
    model = torch.nn.Linear(2, 2)
    forward = model.forward
    assert device.place(model) is model and model.forward == forward


def test_channels_last_is_switched_by_config_except_under_dp() -> None:
    assert settings(channels_last=True).channels_last
    private = OmegaConf.create(
        {"device": "cpu", "train": {"channels_last": True}, "privacy": {"enabled": True}}
    )
    assert not DeviceSettings.from_config(private).channels_last
    model = torch.nn.Conv2d(3, 4, 3)
    settings(channels_last=True).place(model)
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    images = settings(channels_last=True).prepare(torch.zeros(2, 3, 8, 4))
    assert images.is_contiguous(memory_format=torch.channels_last)


def test_train_compile_compiles_the_forward_and_keeps_the_state_dict() -> None:
    device = settings(compile=True)
    assert device.compile
    model = torch.nn.Linear(2, 2)
    keys = list(model.state_dict())
    device.place(model)
    assert model.forward != torch.nn.Linear.forward.__get__(model)
    assert list(model.state_dict()) == keys
