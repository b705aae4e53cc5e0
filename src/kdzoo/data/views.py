"""Named views: the transform pipelines a recipe may ask for, per view, and the dataset that gives each
sample under several of them at once (two augmented views, a plain and an augmented one).

    dataset.views: {x: train, plain: plain}   ->  samples ({"x": aug(image), "plain": image}, label)

Pipelines: `train` (the dataset's training augmentation; none with `dataset.augment: false`), `plain` (the
training images without augmentation), `test` (the evaluation pipeline), `jitter` (train + colour jitter and
grayscale). `register_pipeline` adds more.
"""
from __future__ import annotations

from typing import Callable

import torch

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


class ColourJitter:
    """After a normalising pipeline: undo the normalisation, colour-jitter (0.4, 0.4, 0.4, 0.1) with probability
    0.8, grayscale with probability 0.2 (DS-SRD's and SimCLR's two-view augmentation), normalise again."""

    def __init__(self, inner: Callable, mean, std):
        from torchvision.transforms import v2

        self.inner = inner
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.jitter = v2.Compose([v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                                  v2.RandomGrayscale(p=0.2)])

    def __call__(self, sample):
        x = self.inner(sample)
        pixels = (x * self.std + self.mean).clamp(0, 1)
        return (self.jitter(pixels) - self.mean) / self.std


register_pipeline("jitter", "the training augmentation, then colour jitter p 0.8 and grayscale p 0.2 (two-view KD)")(
    lambda builder, info, augment: ColourJitter(builder.transform("train", info, augment), info.mean, info.std))


class ByolViews:
    """BYOL / i-Mix's view of an image (after the normalising evaluation pipeline, undone and redone):
    RandomResizedCrop(size, scale 0.2-1), colour jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2, flip."""

    def __init__(self, inner: Callable, size: int, mean, std):
        from torchvision.transforms import v2

        self.inner = inner
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = v2.Compose([v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
                                   v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                                   v2.RandomGrayscale(p=0.2), v2.RandomHorizontalFlip()])

    def __call__(self, sample):
        pixels = (self.inner(sample) * self.std + self.mean).clamp(0, 1)
        return (self.augment(pixels) - self.mean) / self.std


def _byol(builder, info: DatasetInfo, augment: bool) -> ByolViews:
    if info.image_size is None:
        raise ConfigError(f"dataset.views: the byol pipeline augments square images; {info.name} has samples of shape "
                          f"{info.input_shape}")
    return ByolViews(builder.transform("test", info, False) or IDENTITY, info.image_size, info.mean, info.std)


register_pipeline("byol", "BYOL / i-Mix views: random resized crop (0.2-1), colour jitter, grayscale, flip")(_byol)


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

