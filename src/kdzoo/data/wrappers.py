"""Dataset wrappers that keep `.targets` and `.info` visible to the trainer."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset


def _as_index_tensor(indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(indices, dtype=torch.long).reshape(-1)


class IndexedDataset(Dataset):
    """Yields `(image, label, index)`: methods that keep per-sample state (e.g. CRD's memory bank) need the index."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, label, index

    @property
    def targets(self) -> torch.Tensor:
        return self.dataset.targets

    @property
    def info(self):
        return self.dataset.info


class LabeledSubset(Dataset):
    """A subset by indices whose `.targets` is restricted accordingly and whose `.info` is the parent's."""

    def __init__(self, dataset: Dataset, indices: Sequence[int] | torch.Tensor):
        self.dataset = dataset
        self.indices = _as_index_tensor(indices)
        self.targets = torch.as_tensor(dataset.targets, dtype=torch.long)[self.indices]
        self.info = getattr(dataset, "info", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]


def subset(dataset: Dataset, indices: Sequence[int] | torch.Tensor) -> LabeledSubset:
    """`dataset` restricted to `indices` (positions into `dataset`), keeping `.targets` and `.info`."""
    return LabeledSubset(dataset, indices)


def source_indices(dataset: Dataset):
    """The positions in the underlying dataset of `dataset`'s items (through nested subsets), or None."""
    inner = getattr(dataset, "dataset", None)
    below = source_indices(inner) if inner is not None else None
    own = getattr(dataset, "indices", None)
    if own is None:
        return below
    return below[own] if below is not None else own


def probe_dataset(train_set, plain_set):
    """`plain_set` (the training split without augmentation) restricted to the images of `train_set`, indexed in
    `train_set`'s order (through any subsets and few-sample draws)."""
    inner = train_set.dataset if isinstance(train_set, IndexedDataset) else train_set
    positions = source_indices(inner)
    chosen = subset(plain_set, positions) if positions is not None else plain_set
    return IndexedDataset(chosen)
