"""Model registry: `create_model(name, num_classes, in_channels)` for the zoo, `tv:` and `timm:` names."""
from __future__ import annotations

from typing import Callable

from torch import nn

from kdzoo.errors import KdzooError
from kdzoo.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str, description: str = ""):
    """Register a builder `fn(num_classes: int, in_channels: int) -> nn.Module`."""
    return MODELS.register(name, description)


def create_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a model by name: a zoo name (`resnet20`), `tv:<torchvision name>` or `timm:<timm name>`."""
    if name.startswith("tv:") and name.endswith("_aux"):  # HSAKD's heads on a torchvision ResNet
        from kdzoo.models.aux import create_aux

        model = create_aux(name, num_classes=num_classes, in_channels=in_channels)
    elif name.startswith(("tv:", "timm:")):
        from kdzoo.models.external import create_external

        model = create_external(name, num_classes=num_classes, in_channels=in_channels)
    elif name.endswith("_trans") and name not in MODELS:  # says why an arch cannot host the branch
        from kdzoo.models.trans import create_trans

        model = create_trans(name, num_classes=num_classes, in_channels=in_channels)
    else:
        model = MODELS.get(name)(num_classes=num_classes, in_channels=in_channels)
    model.kdzoo_arch = name  # remembered for checkpoints and feature specs
    return model


def list_models() -> list[str]:
    """Zoo model names (tv:/timm: names are open-ended and not listed)."""
    return MODELS.names()


def check_model_name(name: str) -> None:
    """Raise a one-line KdzooError for an unknown model name, without building it."""
    if name.startswith("timm:"):
        try:
            import timm  # noqa: F401
        except ImportError:
            raise KdzooError(f"model {name!r} needs timm: pip install timm") from None
    elif name.endswith("_trans") and name not in MODELS:
        create_model(name, num_classes=10)  # raises why the arch cannot host a transformer branch
    elif not name.startswith("tv:"):
        MODELS.get(name)
