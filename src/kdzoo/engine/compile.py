"""`engine.compile: true`: torch.compile of every network a program runs (trained, frozen, EMA), in place
(`nn.Module.compile`), so state_dict keys, checkpoints and DDP wrapping stay as they are. Cached slots run no
network and are skipped. The first steps are slow while the graphs compile; the step benchmark measures the rest.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from kdzoo.errors import ConfigError


def compile_program(program, backend: str = "inductor", mode: Optional[str] = None) -> list[str]:
    """Compile each slot's forward (its feature wrapper where it has one) with torch.compile's `mode` (None: its
    default); returns the slots compiled."""
    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        known = ", ".join(sorted(torch._dynamo.list_backends(exclude_tags=())))
        raise ConfigError(f"engine.compile_backend: unknown backend {backend!r} (torch has: {known})")
    done = []
    for name, slot in program.models.items():
        if slot.role == "cached":
            continue
        target = slot.features if isinstance(slot.features, nn.Module) else slot.module
        target.compile(backend=backend, **({"mode": mode} if mode else {}))
        done.append(name)
    return done
