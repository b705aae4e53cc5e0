"""Batch transforms: what turns a loaded batch into the one a step trains on, for any method or regime.

rotate4 (HSAKD's self-supervised augmentation): each image under its 4 rotations, interleaved
(x0 r0, x0 r1, x0 r2, x0 r3, x1 r0, ...), rotation k = rot90 by k quarter turns over (H, W); 4B rows, with
`original` the indices of the unrotated rows 0, 4, 8, ..., `targets` each image's class repeated, and
`aux_targets` the joint label 4 * class + k.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from kdzoo.core.batch import Batch
from kdzoo.errors import ConfigError
from kdzoo.registry import Registry

BATCH_TRANSFORMS: Registry[Callable[[Batch], Batch]] = Registry("batch transform")


@BATCH_TRANSFORMS.register("rotate4", "4 rotations per image, joint (class, rotation) labels (HSAKD)")
def rotate4(batch: Batch) -> Batch:
    x = batch.inputs
    if x.dim() != 4:
        raise ConfigError(f"batch transform rotate4: needs image batches (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ConfigError(f"batch transform rotate4: needs square images, got {x.shape[-2]}x{x.shape[-1]}")
    b = x.shape[0]
    memory = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 \
        else torch.contiguous_format
    rotated = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1).reshape(4 * b, *x.shape[1:])
    rotation = torch.arange(4, device=x.device).repeat(b)
    targets = batch.targets.repeat_interleave(4)
    return replace(batch, inputs=rotated.contiguous(memory_format=memory), targets=targets,
                   index=None if batch.index is None else batch.index.repeat_interleave(4),
                   views={}, original=torch.arange(0, 4 * b, 4, device=x.device), aux_targets=targets * 4 + rotation)


def batch_transform(name: str) -> Callable[[Batch], Batch]:
    if name not in BATCH_TRANSFORMS:
        raise ConfigError(f"unknown batch transform {name!r} (batch transforms: {', '.join(BATCH_TRANSFORMS.names())})")
    return BATCH_TRANSFORMS.get(name)
