"""Device and numeric precision: bf16 autocast where the hardware has it, fp16 with loss scaling on old GPUs."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from kdzoo.errors import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"engine.device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"engine.device: {name} requested but CUDA is not available")
    return device


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("engine.precision: fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return name


@dataclass
class Precision:
    """Autocast context and loss scaler for one resolved precision."""

    name: str
    device: torch.device

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def scaler(self) -> Optional[torch.amp.GradScaler]:
        return torch.amp.GradScaler("cuda") if self.name == "fp16" else None
