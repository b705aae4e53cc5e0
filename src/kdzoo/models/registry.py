"""Model registry: `create_model(name, num_classes, in_channels)` for the zoo, `tv:` and `timm:` names."""
from __future__ import annotations

from typing import Callable

from torch import nn

from kdzoo.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str, description: str = ""):
    """Register a builder `fn(num_classes: int, in_channels: int) -> nn.Module`."""
    return MODELS.register(name, description)


# Families of names no list can hold (`tv:<any torchvision model>`, `<arch>_trans`): (claims(name), build(name,
# num_classes, in_channels), check(name)), tried in registration order before the zoo's names.
RESOLVERS: list[tuple[Callable[[str], bool], Callable[..., nn.Module], Callable[[str], None]]] = []


def register_resolver(claims: Callable[[str], bool], build: Callable[..., nn.Module],
                      check: Callable[[str], None] = lambda name: None) -> None:
    """Add a family of model names: `build` makes the ones `claims` accepts; `check` raises a one-line
    KdzooError for one that cannot be built, without building it. Earlier resolvers win."""
    RESOLVERS.append((claims, build, check))


def _resolver(name: str):
    return next((r for r in RESOLVERS if r[0](name)), None)


def create_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a model by name: a zoo name (`resnet20`), or one of a resolver's families (`tv:<torchvision name>`,
    `timm:<timm name>`, `tv:<resnet>_aux`, `<arch>_trans`)."""
    resolver = _resolver(name)
    build = (lambda n, **kw: resolver[1](n, **kw)) if resolver else (lambda n, **kw: MODELS.get(n)(**kw))
    model = build(name, num_classes=num_classes, in_channels=in_channels)
    model.kdzoo_arch = name  # remembered for checkpoints and feature specs
    return model


def list_models() -> list[str]:
    """Zoo model names (tv:/timm: names are open-ended and not listed)."""
    return MODELS.names()


def check_model_name(name: str) -> None:
    """Raise a one-line KdzooError for an unknown model name, without building it."""
    resolver = _resolver(name)
    if resolver is not None:
        resolver[2](name)
    else:
        MODELS.get(name)
