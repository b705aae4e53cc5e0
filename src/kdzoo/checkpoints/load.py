"""Models from checkpoints: the deployable model a checkpoint's metadata describes, loaded strictly; a teacher
checked against the run's data."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import nn

from kdzoo.checkpoints.format import load_state_dict_strict, load_weights, read_meta
from kdzoo.checkpoints.store import resolve_checkpoint
from kdzoo.errors import CheckpointError
from kdzoo.models import create_model
from kdzoo.plugins import import_modules


def model_from_meta(meta: dict[str, Any]) -> nn.Module:
    """The deployable model a checkpoint describes (a zoo/tv/timm model, or a method's inference wrapper)."""
    import_modules(meta.get("imports") or [], "checkpoint imports")  # the plugins its run named
    model = create_model(meta["arch"], num_classes=meta["num_classes"], in_channels=meta.get("in_channels", 3))
    wrapper = meta.get("wrapper")
    if wrapper:
        from kdzoo.distillers import METHODS

        model = METHODS.get(wrapper["method"]).rebuild_inference(model, wrapper)
    return model


def load_model(path: str | Path, which: str = "best") -> tuple[nn.Module, dict[str, Any], Path]:
    """Model, metadata and resolved file of a checkpoint (a run folder or a .safetensors file)."""
    file = resolve_checkpoint(path, which)
    state, meta = load_weights(file)
    for key in ("arch", "num_classes"):
        if key not in meta:
            raise CheckpointError(f"{file}: metadata lacks {key!r}; convert it with `kdzoo import-checkpoint`")
    model = model_from_meta(meta)
    load_state_dict_strict(model, state, str(file))
    return model, meta, file


def load_teacher(path: str, expect_arch: Optional[str], num_classes: int, in_channels: int,
                 dataset: str) -> tuple[nn.Module, dict[str, Any]]:
    """Load and check a teacher: its architecture, class count and input channels must fit this run."""
    file = resolve_checkpoint(path, "best")
    meta = read_meta(file)
    if expect_arch and meta.get("arch") != expect_arch:
        raise CheckpointError(f"teacher checkpoint {file} holds a {meta.get('arch')}, but teacher.arch is "
                              f"{expect_arch}")
    if meta.get("num_classes") != num_classes:
        raise CheckpointError(f"teacher checkpoint {file} has {meta.get('num_classes')} classes, but dataset "
                              f"{dataset} has {num_classes}")
    if meta.get("in_channels", 3) != in_channels:
        raise CheckpointError(f"teacher checkpoint {file} takes {meta.get('in_channels', 3)}-channel input, but "
                              f"dataset {dataset} has {in_channels} channels")
    model, meta, _ = load_model(file)
    return model, meta
