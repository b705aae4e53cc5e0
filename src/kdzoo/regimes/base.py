"""The regime registry. A regime (a `Regime` subclass, program/assemble.py) declares how networks train together:
its networks and their roles, what it hosts, its evaluators and artifacts; the assembler builds its program and the
engine runs it without knowing any regime by name."""
from __future__ import annotations

from kdzoo.program.assemble import Regime, count_params
from kdzoo.program.program import BuildContext
from kdzoo.registry import Registry

REGIMES: Registry = Registry("regime")


def register_regime(cls):
    REGIMES.register(cls.name, cls.description)(cls)
    return cls


__all__ = ["REGIMES", "BuildContext", "Regime", "count_params", "register_regime"]
