"""DeviceSettings: what the config switches on, and what `place` does with it."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import ppa.device
from ppa.device import DeviceSettings, cpu_has_native_bf16


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


@pytest.mark.parametrize("native", [True, False])
def test_amp_modes_on_the_cpu(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ppa.device, "cpu_has_native_bf16", lambda: native)
    assert settings(amp="auto").amp_dtype is None
    assert settings(amp=False).amp_dtype is None
    assert settings(amp=True).amp_dtype == torch.bfloat16
    assert settings(amp="native").amp_dtype == (torch.bfloat16 if native else None)


def test_dp_keeps_float32_on_the_cpu_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ppa.device, "cpu_has_native_bf16", lambda: True)

    def private(amp: object) -> DeviceSettings:
        cfg = {"device": "cpu", "train": {"amp": amp}, "privacy": {"enabled": True}}
        return DeviceSettings.from_config(OmegaConf.create(cfg))

    assert private("native").amp_dtype is None
    assert private(True).amp_dtype == torch.bfloat16


def test_an_unknown_amp_mode_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"train\.amp='bf16'"):
        settings(amp="bf16")


def test_native_bf16_is_a_boolean_answer() -> None:
    assert isinstance(cpu_has_native_bf16(), bool)


def test_bf16_autocast_runs_a_cpu_forward_in_bf16() -> None:
    device = settings(amp=True)
    layer = torch.nn.Linear(4, 2)
    with device.autocast():
        out = layer(torch.ones(3, 4))
    assert out.dtype == torch.bfloat16
