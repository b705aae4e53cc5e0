"""Named views: the transform pipelines a recipe may ask for, per view, and the dataset that gives each
sample under several of them at once (two augmented views, a plain and an augmented one).

    dataset.views: {x: train, plain: plain}   ->  samples ({"x": aug(image), "plain": image}, label)

Pipelines: `train` (the dataset's training augmentation; none with `dataset.augment: false`), `plain` (the
training images without augmentation), `test` (the evaluation pipeline), `jitter` (train + colour jitter and
grayscale), `byol` (BYOL / i-Mix's views of an image), `tabular` (masking and noise on a feature vector).
`register_pipeline` adds more.
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


class PixelAugment:
    """Torchvision augmentations in pixel space after a normalising pipeline: undo its normalisation, apply `ops`
    to the [0, 1] image, normalise again."""

    def __init__(self, inner: Callable, ops: Callable, mean, std):
        self.inner, self.ops = inner, ops
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, sample):
        pixels = (self.inner(sample) * self.std + self.mean).clamp(0, 1)
        return (self.ops(pixels) - self.mean) / self.std


def colour_jitter():
    """Colour jitter (0.4, 0.4, 0.4, 0.1) with probability 0.8, grayscale with probability 0.2 (SimCLR, DS-SRD)."""
    from torchvision.transforms import v2

    return [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)]


def _jitter(builder, info: DatasetInfo, augment: bool) -> PixelAugment:
    from torchvision.transforms import v2

    return PixelAugment(builder.transform("train", info, augment), v2.Compose(colour_jitter()), info.mean, info.std)


register_pipeline("jitter", "the training augmentation, then colour jitter p 0.8 and grayscale p 0.2 (two-view KD)")(
    _jitter)


def _byol(builder, info: DatasetInfo, augment: bool) -> PixelAugment:
    """BYOL / i-Mix's view of an image: RandomResizedCrop(size, scale 0.2-1), colour jitter, grayscale, flip."""
    from torchvision.transforms import v2

    if info.image_size is None:
        raise ConfigError(f"dataset.views: the byol pipeline augments square images; {info.name} has samples of shape "
                          f"{info.input_shape}")
    ops = v2.Compose([v2.RandomResizedCrop(info.image_size, scale=(0.2, 1.0), antialias=True), *colour_jitter(),
                      v2.RandomHorizontalFlip()])
    return PixelAugment(builder.transform("test", info, False) or IDENTITY, ops, info.mean, info.std)


register_pipeline("byol", "BYOL / i-Mix views: random resized crop (0.2-1), colour jitter, grayscale, flip")(_byol)


class FeatureCorruption:
    """A self-supervised view of a feature vector (tabular rows): each feature is masked (set to 0, the training
    mean of a standardised feature, "absent" for a binary one) with probability `mask`, then Gaussian noise of
    standard deviation `noise` is added to every feature (VIME's masking, SimCLR-style noise; no column statistics
    beyond the standardisation are needed)."""

    def __init__(self, inner: Callable, mask: float = 0.2, noise: float = 0.1):
        self.inner, self.mask, self.noise = inner, mask, noise

    def __call__(self, sample):
        x = torch.as_tensor(self.inner(sample), dtype=torch.float32)
        kept = (torch.rand(x.shape) >= self.mask).to(x.dtype)
        return x * kept + self.noise * torch.randn(x.shape)


def _tabular(builder, info: DatasetInfo, augment: bool) -> FeatureCorruption:
    if len(info.input_shape) != 1:
        raise ConfigError(f"dataset.views: the tabular pipeline corrupts feature vectors; {info.name} has samples of "
                          f"shape {info.input_shape} (use byol for images)")
    return FeatureCorruption(builder.transform("test", info, False) or IDENTITY)


register_pipeline("tabular", "feature vectors: each feature masked to 0 with p 0.2, then Gaussian noise (0.1) added")(
    _tabular)


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

