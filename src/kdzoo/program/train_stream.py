"""What a recipe's methods ask of the training stream, for any regime: dataset indices, only full batches, and
one batch transform (declared by a method or set by `dataset.batch_transform`; they must agree)."""
from __future__ import annotations

from typing import Optional

from kdzoo.data.batch_transforms import batch_transform
from kdzoo.data.stream import DataStream
from kdzoo.errors import ConfigError


def stream_needs(cfg, classes: list[type]) -> dict[str, bool]:
    """`recipe_streams` options for these method classes."""
    return {"needs_index": any(c.needs_index for c in classes),
            "drop_last": cfg.dataset.drop_last or any(c.fixed_batch for c in classes)}


def chosen_batch_transform(cfg, classes: list[type]) -> Optional[str]:
    """`dataset.batch_transform`, or the one the methods ask for (they must agree)."""
    asked = list(dict.fromkeys(c.batch_transform for c in classes if c.batch_transform))
    chosen = cfg.dataset.batch_transform
    if chosen is None and len(asked) > 1:
        raise ConfigError(f"loss: its methods ask for different batch transforms ({', '.join(asked)})")
    if chosen is not None and asked and asked != [chosen]:
        needing = next(c.name for c in classes if c.batch_transform and c.batch_transform != chosen)
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
