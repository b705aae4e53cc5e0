"""A regime says how networks are trained together: it builds them and defines one training step.

The engine runs a regime's phases (an optional init stage, then the main stage) and knows no regime by name;
a regime knows no loss term by name: it gets them from the methods and the recipe's weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import Tensor, nn

from kdzoo.config.schema import Config
from kdzoo.data import DatasetInfo
from kdzoo.distillers.base import Batch, StepInfo
from kdzoo.engine.device import Precision
from kdzoo.engine.distributed import DistInfo
from kdzoo.registry import Registry

REGIMES: Registry = Registry("regime")


def register_regime(cls):
    REGIMES.register(cls.name, cls.description)(cls)
    return cls


@dataclass
class RunContext:
    """What a regime needs to build itself."""

    cfg: Config
    device: torch.device
    precision: Precision
    dist: DistInfo
    info: DatasetInfo
    train_targets: Tensor


@dataclass
class Phase:
    """A stretch of training with its own optimizer: `epochs` of `step` over `params`."""

    name: str
    epochs: int
    params: list[nn.Parameter]
    step: Callable[[Batch, StepInfo], dict[str, Tensor]]
    weights: dict[str, float]
    evaluate: bool = True
    lr: Optional[float] = None  # None: the recipe's optim.lr
    schedule: bool = True  # False: constant lr (init stages)


class Regime:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    needs_index: bool = False
    drop_last: bool = False

    def __init__(self, ctx: RunContext):
        self.ctx = ctx

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def wrap_train_dataset(self, dataset):
        """Hook for regimes that need more per sample (indices, several views)."""
        if self.needs_index:
            from kdzoo.data import IndexedDataset

            return IndexedDataset(dataset)
        return dataset

    def make_batch(self, raw: Any) -> Batch:
        device = self.ctx.device
        inputs = raw[0].to(device, non_blocking=True)
        if self.ctx.cfg.engine.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        index = raw[2].to(device, non_blocking=True) if len(raw) > 2 else None
        return Batch(inputs=inputs, targets=raw[1].to(device, non_blocking=True), index=index)

    def train(self, mode: bool = True) -> None:
        raise NotImplementedError

    def eval_model(self) -> nn.Module:
        """The network whose test accuracy is reported and whose weights are deployed."""
        raise NotImplementedError

    def deploy_meta(self) -> dict[str, Any]:
        """Metadata that rebuilds `eval_model()` from a checkpoint (arch, classes, wrapper)."""
        raise NotImplementedError

    def on_epoch_start(self, phase: str, epoch: int) -> None:
        pass

    def after_step(self, phase: str) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """A short summary for the run log (parameter counts, methods)."""
        return {}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

