"""Replayable augmentation (the data half of `teacher.cache: replay`): a training transform whose random steps
take their draws from a table, one row of parameters per (epoch, image), instead of the RNG; the same row gives
the same augmented image in any run, worker or process.

Steps: kdzoo's PadRandomCrop (top, left) and RandomHorizontalFlip (flip), torchvision v2's RandomResizedCrop
(area fraction, log aspect ratio and the box centre, relative to the image, so a row does not depend on the
image's size: one draw of torchvision's loop, the box clamped to the image where it does not fit instead of
redrawn) and RandomHorizontalFlip; deterministic steps (resize, centre crop, normalise, to-tensor) run as they
are. Any other random step cannot be replayed: one-line error.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import Compose, v2

from kdzoo.data.transforms import PadRandomCrop, RandomHorizontalFlip
from kdzoo.errors import ConfigError

DETERMINISTIC = (v2.Resize, v2.CenterCrop, v2.PILToTensor, v2.ToImage, v2.ToDtype, v2.Normalize)


class ReplayAugment:
    """A Compose of known steps; `sample(n, generator)` draws an (n, width) table, `apply(image, row)` replays."""

    def __init__(self, transform: Optional[Callable]):
        steps = list(transform.transforms) if isinstance(transform, Compose) else ([transform] if transform else [])
        self.steps, self.width = [], 0
        for step in steps:
            kind = self._kind(step)
            self.steps.append((kind, step, self.width))
            self.width += {"crop": 2, "flip": 1, "rrc": 4, "fixed": 0}[kind]

    @staticmethod
    def _kind(step) -> str:
        if isinstance(step, PadRandomCrop):
            return "crop"
        if isinstance(step, (RandomHorizontalFlip, v2.RandomHorizontalFlip)):
            return "flip"
        if isinstance(step, v2.RandomResizedCrop):
            return "rrc"
        if isinstance(step, DETERMINISTIC) or type(step).__module__.startswith("kdzoo.data.transforms"):
            return "fixed"
        raise ConfigError(f"teacher.cache: replay cannot record the random step {type(step).__name__} of the "
                          "training pipeline (it replays crops and flips); use teacher.cache: false")

    def describe(self) -> str:
        return " > ".join(repr(step) for _, step, _ in self.steps)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        table = torch.zeros(n, self.width)
        for kind, step, at in self.steps:
            if kind == "crop":
                table[:, at:at + 2] = torch.randint(0, 2 * step.padding + 1, (n, 2), generator=generator).float()
            elif kind == "flip":
                table[:, at] = (torch.rand(n, generator=generator) < step.p).float()
            elif kind == "rrc":
                (lo, hi), (r_lo, r_hi) = step.scale, step.ratio
                u = torch.rand(n, 4, generator=generator)
                table[:, at] = lo + (hi - lo) * u[:, 0]
                table[:, at + 1] = math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * u[:, 1]
                table[:, at + 2:at + 4] = u[:, 2:]
        return table

    def apply(self, image, row: Tensor):
        for kind, step, at in self.steps:
            if kind == "fixed":
                image = step(image)
            elif kind == "crop":
                p = step.padding
                height, width = image.shape[-2:]
                top, left = int(row[at]), int(row[at + 1])
                image = torch.nn.functional.pad(image, (p, p, p, p))[..., top:top + height, left:left + width]
            elif kind == "flip":
                if row[at] > 0.5:
                    image = image.flip(-1) if isinstance(image, Tensor) else v2.functional.horizontal_flip(image)
            else:
                image = _resized_crop(image, step, row[at:at + 4])
        return image


def _resized_crop(image, step: v2.RandomResizedCrop, row: Tensor):
    height, width = v2.functional.get_size(image)
    area, ratio = float(row[0]) * height * width, math.exp(float(row[1]))
    w = min(width, max(1, round(math.sqrt(area * ratio))))
    h = min(height, max(1, round(math.sqrt(area / ratio))))
    top, left = round(float(row[3]) * (height - h)), round(float(row[2]) * (width - w))
    return v2.functional.resized_crop(image, top, left, h, w, list(step.size), antialias=True)


class EpochClock:
    """The epoch the replayed images belong to, in shared memory: DataLoader workers (persistent ones too) read
    what the main process set before the epoch's iterator started."""

    def __init__(self):
        self.value = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self.value[0] = epoch

    def get(self) -> int:
        return int(self.value[0])


class ReplayDataset(Dataset):
    """images[i] under `augment` with row i of `table(epoch)`: (image, label) like the dataset it stands for;
    `images` is the un-augmented training set (a subset of it, in the run's order); `table(epoch)` -> (len, width)
    in that order (read from the replay cache per process)."""

    def __init__(self, images: Dataset, augment: ReplayAugment, table: Callable[[int], Tensor], clock: EpochClock):
        self.images, self.augment, self.table, self.clock = images, augment, table, clock
        self.targets = torch.as_tensor(images.targets)
        self.info = getattr(images, "info", None)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image, label = self.images[i]
        return self.augment.apply(image, self.table(self.clock.get())[i]), label
