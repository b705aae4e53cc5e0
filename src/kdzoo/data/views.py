"""Named views: the transform pipelines a recipe may ask for, per view, and the dataset that gives each
sample under several of them at once (two augmented views, a plain and an augmented one).

    dataset.views: {x: train, plain: plain}   ->  samples ({"x": aug(image), "plain": image}, label)

Pipelines: `train` (the dataset's training augmentation; none with `dataset.augment: false`), `plain` (the
training images without augmentation), `test` (the evaluation pipeline), `jitter` (train + colour jitter and
grayscale), `strong` (train + MLKD's RandAugment(2, 10) and cutout), `byol` (BYOL / i-Mix's views of an image),
`tabular` (masking and noise on a feature vector).
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


CUTOUT_GREY = (125, 123, 114)  # the original's cutout fill (RGB); one-channel images get its luminance, 123


def _affine(img, matrix):
    from PIL import Image

    return img.transform(img.size, Image.AFFINE, matrix)


def _fixmatch_ops():
    """(name, op(img, v), low, high) in the order of the original's augment_list(); v ~ U(low, high)."""
    from PIL import ImageEnhance, ImageOps

    return (
        ("AutoContrast", lambda img, v: ImageOps.autocontrast(img), 0.0, 1.0),
        ("Brightness", lambda img, v: ImageEnhance.Brightness(img).enhance(v), 0.05, 0.95),
        ("Color", lambda img, v: ImageEnhance.Color(img).enhance(v), 0.05, 0.95),
        ("Contrast", lambda img, v: ImageEnhance.Contrast(img).enhance(v), 0.05, 0.95),
        ("Equalize", lambda img, v: ImageOps.equalize(img), 0.0, 1.0),
        ("Identity", lambda img, v: img, 0.0, 1.0),
        ("Posterize", lambda img, v: ImageOps.posterize(img, max(1, int(v))), 4.0, 8.0),
        ("Rotate", lambda img, v: img.rotate(v), -30.0, 30.0),
        ("Sharpness", lambda img, v: ImageEnhance.Sharpness(img).enhance(v), 0.05, 0.95),
        ("ShearX", lambda img, v: _affine(img, (1, v, 0, 0, 1, 0)), -0.3, 0.3),
        ("ShearY", lambda img, v: _affine(img, (1, 0, 0, v, 1, 0)), -0.3, 0.3),
        ("Solarize", lambda img, v: ImageOps.solarize(img, v), 0.0, 256.0),
        ("TranslateX", lambda img, v: _affine(img, (1, 0, v * img.size[0], 0, 1, 0)), -0.3, 0.3),
        ("TranslateY", lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1])), -0.3, 0.3),
    )


def fixmatch_cutout(img, fraction: float, u_x: float, u_y: float):
    """The original's Cutout(img, fraction) / CutoutAbs: a grey square of side fraction * width whose centre is
    np.random.uniform(w), i.e. low=w, high=1: w + (1 - w) u, in (1, w] (the original's argument order, kept)."""
    from PIL import ImageDraw

    if fraction <= 0:
        return img
    v = fraction * img.size[0]
    w, h = img.size
    x0 = int(max(0, w + (1 - w) * u_x - v / 2.0))
    y0 = int(max(0, h + (1 - h) * u_y - v / 2.0))
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, min(w, x0 + v), min(h, y0 + v)), CUTOUT_GREY if img.mode == "RGB" else 123)
    return img


class FixMatchRandAugment:
    """MLKD's strong augmentation (Jin-Ying/Multi-Level-Logit-Distillation mdistiller/dataset/cifar100.py
    RandAugment(2, 10), FixMatch's variant, not torchvision's): `n` ops drawn with replacement from the 14 of
    `_fixmatch_ops`, each at a magnitude uniform in its range (the 10 is unused there), then a cutout of side
    U(0, 0.5) x width. PIL ops on the 8-bit image, as the original's on its PIL image; randomness from torch's RNG
    (the loaders seed it per worker) instead of Python's `random` and NumPy's. [0, 1] CHW tensor in and out."""

    def __init__(self, n: int = 2):
        self.n, self.ops = n, _fixmatch_ops()

    def apply(self, img, picks: list[tuple[int, float]], cutout: tuple[float, float, float]):
        """The deterministic part: ops `picks` as (index, u) with v = low + (high - low) u, then the cutout."""
        for index, u in picks:
            _, op, low, high = self.ops[index]
            img = op(img, low + (high - low) * u)
        return fixmatch_cutout(img, *cutout)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        img = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
        picks = list(zip(torch.randint(len(self.ops), (self.n,)).tolist(), torch.rand(self.n).tolist()))
        fraction, u_x, u_y = torch.rand(3).tolist()
        out = torch.from_numpy(np.array(self.apply(img, picks, (0.5 * fraction, u_x, u_y))))
        return (out.unsqueeze(0) if out.dim() == 2 else out.permute(2, 0, 1)).to(torch.float32) / 255


def _strong(builder, info: DatasetInfo, augment: bool) -> PixelAugment:
    if len(info.input_shape) != 3 or info.in_channels not in (1, 3):
        raise ConfigError(f"dataset.views: the strong pipeline augments RGB or grayscale images; {info.name} has "
                          f"samples of shape {info.input_shape}")
    return PixelAugment(builder.transform("train", info, augment), FixMatchRandAugment(2), info.mean, info.std)


register_pipeline("strong", "the training augmentation, then MLKD's RandAugment(2, 10): 2 of 14 PIL ops at random "
                            "magnitudes and a cutout")(_strong)


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

