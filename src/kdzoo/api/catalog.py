"""Models and what kdzoo knows by name, for the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from torch import nn

from kdzoo.models.registry import create_model


def load_model(checkpoint: Union[str, Path], which: str = "best") -> nn.Module:
    """The network a checkpoint holds, in eval mode: a run folder (`which`: best or last; a self-supervised run's
    deployed encoder is its last) or a `.safetensors` file written by kdzoo or `kdzoo import-checkpoint`. A method
    that deploys more than the student (SimKD: projector and teacher head) comes back as that module. The
    checkpoint's metadata is `model.kdzoo_meta`. Loading reads tensors only: it never executes code."""
    from kdzoo.checkpoints.load import load_model as load

    model, meta, _ = load(checkpoint, which)
    setattr(model, "kdzoo_meta", meta)  # a plain attribute for the caller, not a submodule
    return model.eval()


def list_models() -> list[str]:
    """The zoo's model names (`tv:<name>` and `timm:<name>` reach torchvision's and timm's models too)."""
    from kdzoo.models.registry import list_models as names

    return names()


def list_methods() -> list[str]:
    """Distillation methods by name; a recipe's `loss:` weighs their terms."""
    from kdzoo.distillers import METHODS

    return METHODS.names()


def list_datasets() -> list[str]:
    """Datasets by name (digits and fashion_mnist here; CIFAR, STL-10, TinyImageNet, ImageNet read from disk)."""
    from kdzoo.data.registry import list_datasets as names

    return names()


def list_regimes() -> list[str]:
    """How networks train together: offline (a frozen teacher), mutual, double_student, self_supervised, ..."""
    from kdzoo.regimes import REGIMES

    return REGIMES.names()


__all__ = ["create_model", "list_datasets", "list_methods", "list_models", "list_regimes", "load_model"]
