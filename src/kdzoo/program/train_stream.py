"""What a recipe's methods ask of the training stream, for any regime: dataset indices, only full batches,
one batch transform (declared by a method or set by `dataset.batch_transform`; they must agree), and groups
of images (comparative sampling, input mixing: data/groups.py), drawn once per run and saved with it."""
from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kdzoo.core.atomic import atomic_path
from kdzoo.data.batch_transforms import batch_transform
from kdzoo.data.groups import (
    GroupDataset,
    GroupSampler,
    draw_groups,
    group_batch,
    one_layout,
)
from kdzoo.data.stream import DataStream
from kdzoo.data.wrappers import source_indices
from kdzoo.errors import ConfigError

GROUPS_FILE = "groups.safetensors"


def stream_needs(cfg, classes: list[type]) -> dict[str, bool]:
    """`recipe_streams` options for these method classes."""
    return {"needs_index": any(c.requires.index for c in classes) or cfg.teacher.cache,
            "drop_last": cfg.dataset.drop_last or any(c.requires.full_batches for c in classes)}


def chosen_batch_transform(cfg, classes: list[type]) -> Optional[str]:
    """`dataset.batch_transform`, or the one the methods ask for (they must agree)."""
    asked = list(dict.fromkeys(c.requires.batch_transform for c in classes if c.requires.batch_transform))
    chosen = cfg.dataset.batch_transform
    if chosen is None and len(asked) > 1:
        raise ConfigError(f"loss: its methods ask for different batch transforms ({', '.join(asked)})")
    if chosen is not None and asked and asked != [chosen]:
        needing = next(c.name for c in classes if c.requires.batch_transform not in (None, chosen))
        raise ConfigError(f"dataset.batch_transform: {chosen}, but method {needing} trains on {asked[0]} batches")
    return chosen or (asked[0] if asked else None)


def attach_batch_transform(stream: DataStream, cfg, classes: list[type]) -> None:
    """Give the training stream its batch transform, if any; a transform of the inputs alone refuses named views."""
    name = chosen_batch_transform(cfg, classes)
    if name is None:
        return
    if stream.views != ("x",):
        raise ConfigError(f"dataset.views: the {name} batch transform transforms the inputs alone; a recipe with "
                          "several views cannot use it")
    stream.transform = batch_transform(name)


def attach_groups(stream: DataStream, methods, seed: int, folder: Optional[Path], log=print,
                  is_main: bool = True, sync: Callable[[], None] = lambda: None) -> None:
    """Turn the training stream into batches of the groups the methods ask for, if any: the groups are read from
    the run folder when it holds them for these images, layout and seed, else drawn (and saved there)."""
    layout = one_layout(methods.values())
    if layout is None:
        return
    if stream.on_device:
        raise ConfigError("dataset.loader: device draws single images; grouped batches read through the PyTorch "
                          "loader (loader: torch)")
    if stream.views != ("x",) or stream.transform is not None:
        raise ConfigError("dataset.views: grouped batches make their own views; a recipe with groups of images "
                          "takes no other views or batch transform")
    images = stream.dataset
    indices = source_indices(images)
    key = {"layout": repr(layout), "seed": str(seed), "images": str(len(images)),
           "source": hashlib.sha256(str(indices.tolist()).encode()).hexdigest() if indices is not None else "all"}
    if folder is None:  # a program built outside a run
        groups = draw_groups(len(images), layout, seed)
    else:  # the main process decides and writes; every process reads the same file
        path = Path(folder) / GROUPS_FILE
        if is_main and _read_groups(path, key) is None:
            if path.is_file():
                log(f"groups: {path} was drawn for other images, layout or seed; drawing them again")
            with atomic_path(path) as tmp:
                save_file({"groups": draw_groups(len(images), layout, seed)}, str(tmp),
                          metadata={"key": json.dumps(key)})
        sync()
        groups = _read_groups(path, key)
        if groups is None:
            raise ConfigError(f"groups: {path} is missing or holds other groups on this process; every process "
                              "of a run must see the same run folder")
    stream.dataset = GroupDataset(images, groups)
    stream.views = tuple(dict.fromkeys(["x", *layout.views]))
    stream.batch_fn = partial(group_batch, layout=layout, device=stream.device, channels_last=stream.channels_last)
    stream.sampler_fn = lambda dist: GroupSampler(len(groups), len(images), stream.batch_size, stream.seed,
                                                  dist.rank if dist.enabled else 0,
                                                  dist.world_size if dist.enabled else 1)


def _read_groups(path: Path, key: dict[str, str]) -> Optional[torch.Tensor]:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if json.loads((f.metadata() or {}).get("key", "{}")) != key:
                return None
            return f.get_tensor("groups")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
