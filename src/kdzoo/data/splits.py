"""Stratified index selection: label-efficiency subsets and train/validation splits."""
from __future__ import annotations

from numbers import Integral, Real
from typing import Sequence

import torch

from kdzoo.errors import DatasetError


def _requested_total(size: float | int, num_samples: int) -> int:
    if isinstance(size, bool) or not isinstance(size, Real):
        raise DatasetError(f"subset size must be a fraction in (0, 1] or a count, got {size!r}")
    if isinstance(size, Integral):
        if not 1 <= size <= num_samples:
            raise DatasetError(f"subset size {size} must be between 1 and the dataset size {num_samples}")
        return int(size)
    if not 0.0 < size <= 1.0:
        raise DatasetError(f"subset fraction {size} must be in (0, 1]")
    return round(size * num_samples)


def _per_class_counts(class_sizes: torch.Tensor, total: int) -> torch.Tensor:
    """Largest-remainder allocation of `total` proportional to `class_sizes`, at least 1 and at most the class size."""
    quotas = class_sizes.double() * total / class_sizes.sum()
    counts = torch.clamp(quotas.floor().long(), min=1)
    counts = torch.minimum(counts, class_sizes)
    shortfall = total - int(counts.sum())
    if shortfall > 0:
        remainders = quotas - quotas.floor()
        for class_index in torch.argsort(remainders, descending=True, stable=True).tolist():
            if shortfall == 0:
                break
            if counts[class_index] < class_sizes[class_index]:
                counts[class_index] += 1
                shortfall -= 1
    return counts


def stratified_subset(targets: Sequence[int] | torch.Tensor, size: float | int, seed: int) -> torch.LongTensor:
    """Sorted indices of a class-stratified random subset.

    `size` is a fraction in (0, 1] or a count. Each class gets its proportional share (largest remainder,
    so a count is met exactly unless the 1-per-class minimum exceeds it) and at least one sample.
    Deterministic for a given seed; a smaller size with the same seed selects a subset of a larger one.
    """
    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    total = _requested_total(size, len(targets))
    classes, class_sizes = torch.unique(targets, sorted=True, return_counts=True)
    counts = _per_class_counts(class_sizes, total)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label, count in zip(classes.tolist(), counts.tolist()):
        members = torch.nonzero(targets == label).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.sort(torch.cat(chosen)).values


def split_train_val(
    targets: Sequence[int] | torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Stratified (train_indices, val_indices), both sorted, disjoint, covering all samples (e.g. 80/20 for CKD)."""
    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, Real) or not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction {val_fraction!r} must be in (0, 1)")
    val = stratified_subset(targets, float(val_fraction), seed)
    is_val = torch.zeros(len(targets), dtype=torch.bool)
    is_val[val] = True
    return torch.nonzero(~is_val).flatten(), val


def few_sample_split(targets: Sequence[int] | torch.Tensor, size: int, val_fraction: float, seed: int
                     ) -> tuple[torch.LongTensor, torch.LongTensor]:
    """CKD's few-sample data: `size` stratified indices of the whole set, split into (train, val), both sorted,
    with `size - int(size * (1 - val_fraction))` in val; the split is stratified when every class of the
    subset has at least two images and val has room for each class, random otherwise."""
    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    if not 2 <= size <= len(targets):
        raise DatasetError(f"subset size {size} must be between 2 and the dataset size {len(targets)}")
    n_val = size - int(size * (1.0 - val_fraction))
    if n_val < 1 or n_val >= size:
        raise DatasetError(f"subset size {size} is too small for a {1 - val_fraction:.0%}/{val_fraction:.0%} "
                           "train/val split (each side needs an image)")
    classes = len(torch.unique(targets))
    generator = torch.Generator().manual_seed(seed)
    chosen = (stratified_subset(targets, size, seed) if size >= classes
              else torch.sort(torch.randperm(len(targets), generator=generator)[:size]).values)
    sub = targets[chosen]
    counts = torch.unique(sub, return_counts=True)[1]
    if bool((counts >= 2).all()) and n_val >= len(counts):
        val = stratified_subset(sub, n_val, seed + 1)
    else:
        val = torch.sort(torch.randperm(size, generator=generator)[:n_val]).values
    is_val = torch.zeros(size, dtype=torch.bool)
    is_val[val] = True
    return chosen[~is_val], chosen[is_val]
