"""An exponential moving average of a network: target <- decay * target + (1 - decay) * source, after each
optimizer step (BYOL's target encoder, DS-SRD's EMA teacher, mean teachers)."""
from __future__ import annotations

import copy
from typing import Literal, Optional

import torch
from torch import nn

BufferPolicy = Literal["copy", "ema", "keep"]


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float, buffers: BufferPolicy = "copy") -> None:
    """Move `target`'s parameters towards `source`'s (same architecture, matched by name). Floating buffers
    (BN statistics) are copied from the source, averaged like the parameters, or kept; integer buffers
    (num_batches_tracked) follow the source unless kept."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"ema decay must be in [0, 1], got {decay}")
    src_params = dict(source.named_parameters())
    for name, param in target.named_parameters():
        param.lerp_(src_params[name].detach().to(param.dtype), 1.0 - decay)
    if buffers == "keep":
        return
    src_buffers = dict(source.named_buffers())
    for name, buf in target.named_buffers():
        value = src_buffers[name]
        if buffers == "ema" and buf.is_floating_point():
            buf.lerp_(value.to(buf.dtype), 1.0 - decay)
        else:
            buf.copy_(value)


class EMA(nn.Module):
    """A frozen copy of `source` (or an existing `target`) kept as its moving average by `update()`."""

    def __init__(self, source: nn.Module, decay: float, target: Optional[nn.Module] = None,
                 buffers: BufferPolicy = "copy"):
        super().__init__()
        self.decay, self.buffers = decay, buffers
        self.target = target if target is not None else copy.deepcopy(source)
        for param in self.target.parameters():
            param.requires_grad_(False)
        self._source = [source]  # a list: not a submodule, so state_dict() holds the target only

    @property
    def source(self) -> nn.Module:
        return self._source[0]

    def update(self) -> None:
        ema_update(self.target, self.source, self.decay, self.buffers)

    def forward(self, *args, **kwargs):
        return self.target(*args, **kwargs)
