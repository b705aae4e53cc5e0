"""Standard transforms.

Small in-memory datasets (CIFAR, Fashion-MNIST, digits, STL-10, TinyImageNet) keep images as CHW
tensors, so their pipelines are a few lean tensor ops: torchvision's v2 transforms cost ~10-40 us of
dispatch per call, which alone would make a 60k-sample CPU epoch several times slower.
`PadRandomCrop` + `RandomHorizontalFlip` + `Normalize` here are numerically the classic
`RandomCrop(size, padding)` + `RandomHorizontalFlip` + `ToTensor` + `Normalize`.
ImageNet-style folders use torchvision's v2 transforms on PIL images (decoding dominates there).

All randomness comes from torch's global RNG, which the loaders seed per worker. Pipelines are chained
with the classic `Compose` (a plain loop; v2.Compose adds ~5 us per sample for features unused here).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import Compose, v2

from kdzoo.data.info import DatasetInfo

# ImageNet statistics, also used for TinyImageNet and generic image folders.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Evaluation resizes to size / 0.875 and centre-crops (224 -> 256 -> 224).
IMAGENET_CENTER_CROP_RATIO = 0.875


class PadRandomCrop:
    """Zero-pad `padding` pixels on each side, then crop the original size at a random offset."""

    def __init__(self, padding: int):
        self.padding = padding

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        p = self.padding
        height, width = image.shape[-2:]
        top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
        padded = F.pad(image, (p, p, p, p))
        return padded[..., top : top + height, left : left + width]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror the image left-right with probability `p`."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.flip(-1) if torch.rand(()).item() < self.p else image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class Normalize:
    """uint8 [0, 255] or float [0, 1] CHW tensor -> float32 `(x - mean) / std` (ToTensor + Normalize in one op)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(mean), tuple(std)
        mean_t = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std_t = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        self._float_scale = 1.0 / std_t
        self._uint8_scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        scale = self._uint8_scale if image.dtype == torch.uint8 else self._float_scale
        return torch.addcmul(self._shift, image.to(torch.float32), scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def small_image_transform(
    info: DatasetInfo,
    *,
    train: bool,
    augment: bool,
    native_size: int,
    padding: int,
    flip: bool,
    from_pil: bool = False,
) -> Callable:
    """Optional resize to `info.image_size`, then (train + augment) pad-crop and flip, then normalise.

    The crop padding scales with the resize, e.g. STL-10's 12 px at 96 px becomes CIFAR's 4 px at 32 px.
    """
    size = info.image_size
    steps: list[Callable] = [v2.PILToTensor()] if from_pil else []
    if size != native_size:
        steps.append(v2.Resize((size, size), antialias=True))
    if train and augment:
        if padding:
            steps.append(PadRandomCrop(max(1, round(padding * size / native_size))))
        if flip:
            steps.append(RandomHorizontalFlip())
    steps.append(Normalize(info.mean, info.std))
    return Compose(steps)


def imagenet_transform(info: DatasetInfo, *, train: bool, augment: bool) -> Callable:
    """ImageNet recipe on PIL images: RandomResizedCrop + flip for training, resize + centre crop otherwise."""
    size = info.image_size
    if train and augment:
        steps: list[Callable] = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize(int(size / IMAGENET_CENTER_CROP_RATIO), antialias=True), v2.CenterCrop(size)]
    return Compose([*steps, v2.PILToTensor(), Normalize(info.mean, info.std)])
