"""Freezing parts of a model by module prefix: no gradients, and BatchNorm statistics held fixed, so that a
frozen part stays bit-identical through training (for the model slots of the coming regimes: HSAKD's frozen
teacher backbone, linear probes)."""
from __future__ import annotations

import types
from typing import Iterable

from torch import nn

from kdzoo.errors import ConfigError


def freeze(model: nn.Module, prefixes: Iterable[str]) -> list[str]:
    """Turn off requires_grad for the parameters under each prefix ('' = the whole model) and put those
    modules in eval mode; returns the frozen parameter names. An unknown prefix is a one-line error."""
    prefixes = list(prefixes)
    modules = dict(model.named_modules())
    for prefix in prefixes:
        if prefix not in modules:
            top = ", ".join(name for name, _ in model.named_children())
            raise ConfigError(f"freeze: {prefix!r} is not a module of {type(model).__name__} (top level: {top})")
    frozen = []
    for name, param in model.named_parameters():
        if any(_under(name, prefix) for prefix in prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    for prefix in prefixes:
        _stay_in_eval(modules[prefix])
    return frozen


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _stay_in_eval(module: nn.Module) -> None:
    """`module.train(True)`, also when its parent's train() reaches it, leaves it in eval mode."""
    module.train = types.MethodType(_train_as_eval, module)
    module.eval()


def _train_as_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")
