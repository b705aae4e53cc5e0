"""`InMemoryImageDataset`: images held as one CHW tensor, so indexing costs no decoding or PIL conversion."""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import Dataset


class InMemoryImageDataset(Dataset):
    """Yields `(transform(images[i]), int(targets[i]))`; `images` is (N, C, H, W), uint8 or float in [0, 1]."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        *,
        classes: list[str],
        transform: Callable | None = None,
    ):
        if images.ndim != 4 or len(images) != len(targets):
            raise ValueError(f"expected (N, C, H, W) images and N targets, got {tuple(images.shape)}, {len(targets)}")
        self.images = images.contiguous()
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def __repr__(self) -> str:
        info = getattr(self, "info", None)
        name = info.name if info is not None else type(self).__name__
        return f"{name}: {len(self)} images of {tuple(self.images.shape[1:])}, {len(self.classes)} classes"


class InMemoryVectorDataset(Dataset):
    """Yields `(features[i], int(targets[i]))`: float vectors held as one (N, D) tensor (tabular data, precomputed
    features of a frozen encoder); `.targets` and `.info` as the trainer expects."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, info=None):
        self.features, self.targets, self.info = features, torch.as_tensor(targets, dtype=torch.long), info

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.features[index], int(self.targets[index])
