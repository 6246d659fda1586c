"""Where and how tensors run: the device, mixed precision, memory layout, compilation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn


@dataclass(frozen=True)
class DeviceSettings:
    """Where and how tensors run (GPU fast paths switched by config, off on the CPU)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    non_blocking: bool = False
    compile: bool = False

    @classmethod
    def from_config(cls, cfg: DictConfig) -> DeviceSettings:
        device = resolve_device(cfg.get("device", "auto"))
        cuda = device.type == "cuda"
        cl = cfg.train.get("channels_last", "auto")
        # DP-SGD keeps the contiguous layout: its per-sample gradient rules (ppa/dp) and their
        # exactness tests are written and measured for it (a channels-last DP step agreed with
        # the contiguous one only to float noise, above those tests' tolerances). For the same
        # reason it keeps float32 on the CPU: `native` means `auto` (bf16 on CUDA only) there.
        private = bool(cfg.get("privacy", {}).get("enabled", False))
        amp = cfg.train.get("amp", "auto")
        use_amp = bf16_autocast("auto" if private and amp == "native" else amp, device)
        return cls(
            device=device,
            amp_dtype=torch.bfloat16 if use_amp else None,
            channels_last=(cuda if cl == "auto" else bool(cl)) and not private,
            non_blocking=cuda,
            compile=bool(cfg.train.get("compile", False)),
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def place(self, model: nn.Module) -> nn.Module:
        """Move a model to the device, channels-last when configured, and optionally compile
        its forward (the module and its state-dict keys stay as they are)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile:
            model.forward = torch.compile(model.forward)
        return model

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return (
            images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        )


AMP_MODES = ("auto", "native", True, False)


def bf16_autocast(amp: str | bool, device: torch.device) -> bool:
    """Whether a forward runs under bf16 autocast (`train.amp`).

    auto: on CUDA only. native: wherever the hardware computes bf16 itself, CUDA or a CPU
    whose oneDNN has bf16 kernels (AVX512-BF16 or AMX); elsewhere CPU autocast emulates bf16
    and runs slower than float32. true / false: forced.
    """
    check_amp_mode(amp, "train.amp")
    if amp == "auto":
        return device.type == "cuda"
    if amp == "native":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return bool(amp)


def check_amp_mode(amp: object, key: str) -> None:
    """Raise naming `key` unless `amp` is one of AMP_MODES."""
    if amp not in AMP_MODES:
        raise ValueError(f"{key}={amp!r}: expected one of auto, native, true, false")


def cpu_has_native_bf16() -> bool:
    """oneDNN's own test for bf16 kernels on this CPU (a private torch op; False without it)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} requested but CUDA is not available")
    return device
