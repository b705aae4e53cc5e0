"""`dataset.loader: device`: the whole dataset held on the training device, each batch drawn by index and
augmented there, one batched call per transform, with no worker processes (airbench's recipe for CIFAR-sized data,
where per-image CPU augmentation and worker traffic bound a GPU run, not the GPU).

What a batch is:
- its sample indices are those of the PyTorch loader's sampler (`make_sampler`: the same shuffle per (seed,
  epoch), DistributedSampler's shard per rank), so both loaders visit the same images in the same batches;
- images are the dataset's uint8 (or float) pixels after its deterministic leading steps (decode, resize), stored
  once on the device; the rest of each view's pipeline (pad-crop, flip, normalisation) runs batched
  (`data/batched_transforms.py`) with the same per-image distributions as the per-sample transforms;
- its random draws come from a generator on the device seeded with (seed, epoch, rank) at every epoch start, so a
  run resumed at an epoch boundary draws what an uninterrupted one does, and ranks draw differently.
Batch-level augmentations (mixup, cutmix, cutout, rotations) already run batched on the device in the step.

Datasets it can hold: those read into memory (cifar10/100, fashion_mnist, digits, stl10, speech_commands, tabular
ones) and TinyImageNet (decoded once, at the loader's start). The `jitter` view (colour jitter and greyscale in
pixel space, per image) is batched too. What it cannot batch is refused in one line naming the key: ImageNet's
random-resized crop (use dali), PIL-based views (strong, byol), grouped batches, the replayed teacher.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import Dataset
from torchvision.transforms import Compose, v2

from kdzoo.data.batched_transforms import batched_pixel_ops, batched_step
from kdzoo.data.loaders import make_sampler, worker_seed
from kdzoo.data.views import IDENTITY, MultiViewDataset, PixelAugment
from kdzoo.data.wrappers import IndexedDataset, LabeledSubset
from kdzoo.errors import ConfigError

_AUGMENT_SALT = 0x5BD1E995  # separates the augmentation draws' seed from the shuffle's
# Deterministic steps a pipeline may start with: applied once to the whole dataset when it is stored.
_ONCE = (v2.Resize, v2.PILToTensor)


@dataclass
class Layout:
    """What a stream's dataset is made of: the base dataset, which of its items the stream indexes (None: all),
    each view's (once-steps, batched steps), and whether batches carry their indices."""

    base: Dataset
    positions: Optional[torch.Tensor]
    views: dict[str, tuple[list, list]]
    named: bool  # samples are {view: tensor} (MultiViewDataset), not one tensor
    with_index: bool
    targets: torch.Tensor


def _steps(transform: Optional[Callable]) -> list:
    if transform is None or transform is IDENTITY:
        return []
    return list(transform.transforms) if isinstance(transform, Compose) else [transform]


def _split(view: str, transform: Optional[Callable]) -> tuple[list, list]:
    """(the leading deterministic steps, the batched rest) of a view's pipeline; ConfigError if a step cannot be
    batched."""
    if isinstance(transform, PixelAugment):  # a pipeline, then pixel-space ops (the jitter view)
        lead_steps, batched = _split(view, transform.inner)
        ops = batched_pixel_ops(transform.ops, transform.mean.flatten().tolist(), transform.std.flatten().tolist())
        if ops is None:
            raise ConfigError(f"dataset.loader: device batches colour jitter and greyscale in pixel space; view "
                              f"{view!r} has {type(transform.ops).__name__} ops it cannot (use loader: torch)")
        return lead_steps, [*batched, ops]
    steps = _steps(transform)
    lead = 0
    while lead < len(steps) and isinstance(steps[lead], _ONCE):
        lead += 1
    batched = []
    for step in steps[lead:]:
        fn = batched_step(step)
        if fn is None:
            name = getattr(step, "__name__", type(step).__name__)
            raise ConfigError(f"dataset.loader: device batches pad-crop, flip, resize and normalisation; view "
                              f"{view!r} has {name}, which it cannot (use loader: torch)")
        batched.append(fn)
    return steps[:lead], batched


def layout(dataset: Dataset) -> Layout:
    """The `Layout` of a stream's dataset, or ConfigError naming what `loader: device` cannot read."""
    with_index, positions, targets = False, None, torch.as_tensor(dataset.targets, dtype=torch.long)
    if isinstance(dataset, IndexedDataset):
        with_index, dataset = True, dataset.dataset
    chain = []
    while isinstance(dataset, LabeledSubset):
        chain.append(dataset.indices)
        dataset = dataset.dataset
    for indices in reversed(chain):  # outermost last: positions into the base
        positions = indices if positions is None else positions[indices]
    if isinstance(dataset, MultiViewDataset):
        base, named, transforms = dataset.raw, True, dataset.transforms
    else:
        base, named, transforms = dataset, False, {"x": getattr(dataset, "transform", None)}
    if not any(hasattr(base, key) for key in ("images", "features", "samples")):
        raise ConfigError(f"dataset.loader: device holds image datasets in memory; this stream reads a "
                          f"{type(base).__name__} (use loader: torch)")
    views = {name: _split(name, t) for name, t in transforms.items()}
    leads = {repr(lead) for lead, _ in views.values()}
    if len(leads) > 1:
        raise ConfigError("dataset.views: with loader: device every view must resize alike (it stores the images "
                          "once); use loader: torch")
    return Layout(base, positions, views, named, with_index, targets)


def _stored(base: Dataset, lead: list, rows: Optional[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, bool]:
    """(the images after the lead steps on `device`, whether they are stored in `rows`' order rather than by base
    position). In-memory datasets are taken whole (resized in chunks); file datasets decode the used items once."""
    once = Compose(lead) if lead else None
    if hasattr(base, "images") or hasattr(base, "features"):
        data = base.images if hasattr(base, "images") else base.features
        if once is not None:
            data = torch.cat([once(chunk) for chunk in data.split(4096)])
        return data.to(device), False
    # files (TinyImageNet): decode every used item once through the lead steps (they start with PILToTensor)
    loader_copy = copy.copy(base)
    loader_copy.transform = once
    items = rows.tolist() if rows is not None else range(len(base))
    images = torch.stack([loader_copy[i][0] for i in items])
    return images.to(device), True


class DeviceLoader:
    """Iterates a stream's batches as (inputs or {view: inputs}, labels[, indices]) already on `device`."""

    def __init__(self, dataset: Dataset, *, batch_size: int, train: bool, seed: int, drop_last: bool,
                 device: torch.device, dist, sampler=None):
        self.layout = spec = layout(dataset)
        distributed = bool(dist is not None and dist.enabled)
        self.rank = dist.rank if distributed else 0
        self.sampler, self.sampler_generator = make_sampler(
            dataset, train=train, seed=seed, drop_last=drop_last, distributed=distributed,
            rank=self.rank, world_size=dist.world_size if distributed else 1, sampler=sampler)
        self.batch_size, self.drop_last, self.seed, self.device = batch_size, drop_last, seed, device
        lead = next(iter(spec.views.values()))[0]
        self.images, compact = _stored(spec.base, lead, spec.positions, device)
        # stream index -> row of self.images (None: the same; decoded files are stored in the stream's order)
        self.rows = None if compact or spec.positions is None else spec.positions.to(device)
        self.targets = spec.targets.to(device)
        self.generator = torch.Generator(device=device)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """The epoch's order (the sampler's) and its draws: functions of (seed, epoch, rank) only."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if self.sampler_generator is not None:
            self.sampler_generator.manual_seed(self.seed + epoch)
        # salted: on the CPU the sampler's generator (seed + epoch) would otherwise draw the very same numbers
        self.generator.manual_seed(worker_seed(self.seed, epoch, self.rank) ^ _AUGMENT_SALT)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.device)
        for step in range(len(self)):
            index = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.batch(index)

    def batch(self, index: torch.Tensor) -> tuple[Any, ...]:
        """The batch of stream indices `index` (on the device)."""
        pixels = self.images.index_select(0, index if self.rows is None else self.rows.index_select(0, index))
        views = {}
        for name, (_, steps) in self.layout.views.items():
            x = pixels
            for step in steps:
                x = step(x, self.generator)
            views[name] = x
        inputs = views if self.layout.named else views["x"]
        labels = self.targets.index_select(0, index)
        return (inputs, labels, index) if self.layout.with_index else (inputs, labels)
