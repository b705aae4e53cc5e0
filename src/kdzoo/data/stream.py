"""A named data stream of a program (train, val, test, probe): a dataset, how it is batched, and how its raw
samples become a `Batch` on the device. The stream builds its own loader, once."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kdzoo.core.batch import Batch
from kdzoo.data.loaders import make_loader
from kdzoo.errors import ConfigError


def to_batch(raw: Any, device: torch.device, channels_last: bool = False) -> Batch:
    """(inputs, labels[, index]) from a loader -> Batch on `device`. Inputs that are a mapping are named views:
    the first is `inputs`, all are in `views`."""
    def move(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(device, non_blocking=True)
        if channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    first = raw[0]
    views = {name: move(t) for name, t in first.items()} if isinstance(first, dict) else {}
    inputs = next(iter(views.values())) if views else move(first)
    index = raw[2].to(device, non_blocking=True) if len(raw) > 2 else None
    return Batch(inputs=inputs, targets=raw[1].to(device, non_blocking=True), index=index, views=views)


@dataclass
class DataStream:
    """`train` streams shuffle (deterministically per seed and epoch); others are read in order."""

    dataset: Dataset
    batch_size: int
    train: bool = False
    drop_last: bool = False
    num_workers: int = 0
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels_last: bool = False
    batch_size_key: str = "dataset.batch_size"  # the recipe key named when no full batch fits
    batch_fn: Optional[Callable[[Any], Batch]] = None  # replaces `to_batch` (groups, mixing)
    transform: Optional[Callable[[Batch], Batch]] = None  # applied to every batch (data/batch_transforms.py)
    views: tuple[str, ...] = ("x",)  # the named views its batches carry ("x": the inputs)
    sampler_fn: Optional[Callable[[Any], Sampler]] = None  # (DistInfo) -> the training sampler (group streams)
    on_device: bool = False  # dataset.loader: device (data/device_loader.py) instead of torch's DataLoader
    _loader: Optional[DataLoader] = field(default=None, init=False, repr=False)

    def loader(self, dist) -> Any:
        if self._loader is None and self.on_device:
            from kdzoo.data.device_loader import DeviceLoader

            self._loader = DeviceLoader(self.dataset, batch_size=self.batch_size, train=self.train, seed=self.seed,
                                        drop_last=self.drop_last, device=self.device, dist=dist,
                                        sampler=self.sampler_fn(dist) if self.sampler_fn is not None else None)
        if self._loader is None:
            self._loader = make_loader(self.dataset, batch_size=self.batch_size, train=self.train, seed=self.seed,
                                       num_workers=self.num_workers, drop_last=self.drop_last,
                                       distributed=dist.enabled, rank=dist.rank, world_size=dist.world_size,
                                       sampler=self.sampler_fn(dist) if self.sampler_fn is not None else None)
        if self.train and len(self._loader) == 0:
            raise ConfigError(f"{self.batch_size_key}: {self.batch_size} is larger than the {len(self.dataset)} "
                              "training samples and the last partial batch is dropped")
        return self._loader

    def batch(self, raw: Any) -> Batch:
        batch = self.batch_fn(raw) if self.batch_fn is not None else to_batch(raw, self.device, self.channels_last)
        return self.transform(batch) if self.transform is not None else batch

    def sample_input(self) -> torch.Tensor:
        """One real sample as a model sees it (the first view of item 0), for shape probes."""
        first = self.dataset[0][0]
        return next(iter(first.values())) if isinstance(first, dict) else first
