"""Named views: the transform pipelines a recipe may ask for, per view, and the dataset that gives each
sample under several of them at once (two augmented views, a plain and an augmented one).

    dataset.views: {x: train, plain: plain}   ->  samples ({"x": aug(image), "plain": image}, label)

Pipelines: `train` (the dataset's training augmentation; none with `dataset.augment: false`), `plain` (the
training images without augmentation), `test` (the evaluation pipeline). `register_pipeline` adds more.
"""
from __future__ import annotations

from typing import Callable

from torch.utils.data import Dataset

from kdzoo.data.info import DatasetInfo
from kdzoo.errors import ConfigError
from kdzoo.registry import Registry

# name -> fn(builder, info, augment) -> transform
PIPELINES: Registry = Registry("pipeline")


def register_pipeline(name: str, description: str):
    return PIPELINES.register(name, description)


register_pipeline("train", "the dataset's training augmentation")(
    lambda builder, info, augment: builder.transform("train", info, augment))
register_pipeline("plain", "training images without augmentation")(
    lambda builder, info, augment: builder.transform("train", info, False))
register_pipeline("test", "the evaluation pipeline")(
    lambda builder, info, augment: builder.transform("test", info, False))


def pipeline(name: str, builder, info: DatasetInfo, augment: bool) -> Callable:
    if name not in PIPELINES:
        raise ConfigError(f"dataset.views: unknown pipeline {name!r} (pipelines: {', '.join(PIPELINES.names())})")
    return PIPELINES.get(name)(builder, info, augment)


def IDENTITY(sample):  # noqa: N802 - a constant-like default: load samples untransformed
    return sample


class MultiViewDataset(Dataset):
    """Yields ({view: transform(sample)}, label) from a dataset loaded without a transform."""

    def __init__(self, raw: Dataset, transforms: dict[str, Callable]):
        self.raw, self.transforms = raw, transforms
        self.targets = raw.targets
        self.info = getattr(raw, "info", None)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int):
        sample, label = self.raw[index]
        return {name: transform(sample) for name, transform in self.transforms.items()}, label

