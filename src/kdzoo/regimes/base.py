"""A regime says how networks are trained together: `build(ctx)` returns the program (model slots, data
streams, phases, artifacts) that the engine executes. The engine knows no regime by name and imports none."""
from __future__ import annotations

from typing import ClassVar

from torch import nn

from kdzoo.program import BuildContext, Program
from kdzoo.registry import Registry

REGIMES: Registry = Registry("regime")


def register_regime(cls):
    REGIMES.register(cls.name, cls.description)(cls)
    return cls


class Regime:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @classmethod
    def build(cls, ctx: BuildContext) -> Program:
        raise NotImplementedError


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
