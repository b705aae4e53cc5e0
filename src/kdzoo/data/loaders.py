"""Deterministic DataLoaders.

Training order depends only on (seed, epoch): the shuffling sampler owns a generator that
`set_loader_epoch` reseeds with seed + epoch, so a resumed run replays the same order. The sampler's
generator is kept apart from the loader's (which seeds the workers) because the loader draws a worker
base seed each time it creates workers — once with persistent workers, every epoch without — and
sharing one generator would make the order depend on that history.
"""
from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from kdzoo.errors import DatasetError

# Offsets the per-rank worker seeds so ranks do not draw identical augmentations.
_RANK_SEED_STRIDE = 1 << 32
_FOLD = 0x9E3779B1  # odd (2**32 / golden ratio): folds a seed's high 32 bits into its low ones


class ShardSampler(Sampler[int]):
    """Evaluation sharding: rank r gets indices r, r + world_size, ... — no padding, no duplicates,
    so per-rank correct counts sum to the exact dataset accuracy."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int):
        _check_rank(rank, world_size)
        self.num_samples_total = len(dataset)
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples_total, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples_total, self.world_size))


class SeededDataLoader(DataLoader):
    """A DataLoader that remembers what `set_loader_epoch` needs to reseed it."""

    def __init__(self, dataset: Dataset, *, seed: int, rank: int, epoch_seeded: bool,
                 sampler_generator: torch.Generator | None, **kwargs):
        super().__init__(dataset, **kwargs)
        self.seed, self.rank, self.epoch_seeded = seed, rank, epoch_seeded
        self.sampler_generator = sampler_generator


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: torch already seeds each worker with base_seed + worker_id; mirror it into numpy and random."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DatasetError(f"invalid distributed setting rank={rank}, world_size={world_size}")


def worker_seed(seed: int, epoch: int, rank: int) -> int:
    """The 32-bit seed of (seed, epoch, rank)'s draws. torch's CPU generator keeps only a seed's low 32 bits, so
    rank * 2**32 alone would give every rank the same draws: the high part is folded in with an odd multiplier
    (rank 0's seeds below 2**32 are unchanged)."""
    value = seed + epoch + rank * _RANK_SEED_STRIDE
    return (value + (value >> 32) * _FOLD) % 2**32


def make_sampler(dataset: Dataset, *, train: bool, seed: int, drop_last: bool = False, distributed: bool = False,
                 rank: int = 0, world_size: int = 1,
                 sampler: Sampler[int] | None = None) -> tuple[Sampler[int], torch.Generator | None]:
    """(the sampler, the generator `set_loader_epoch` reseeds or None): training shuffles deterministically
    (DistributedSampler's shard when distributed), evaluation reads in order (sharded when distributed);
    `sampler`, the caller's own, is used as given. Both loaders, torch's and `loader: device`, draw from it."""
    if distributed:
        _check_rank(rank, world_size)
    if sampler is not None:  # the stream's own (it shards and reseeds itself)
        return sampler, None
    if train and distributed:
        return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                  drop_last=drop_last), None
    if train:
        generator = torch.Generator().manual_seed(seed)
        return RandomSampler(dataset, generator=generator), generator
    if distributed:
        return ShardSampler(dataset, rank, world_size), None
    return SequentialSampler(dataset), None


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    distributed: bool = False,
    rank: int = 0,
    world_size: int = 1,
    epoch_seeded: bool = True,
    sampler: Sampler[int] | None = None,
) -> DataLoader:
    """Training loaders shuffle deterministically; evaluation loaders are sequential (sharded when distributed).

    Call `set_loader_epoch(loader, epoch)` before each training epoch. `sampler`: a training sampler of the
    caller's (with `set_epoch`) instead of the shuffling one.
    """
    if batch_size < 1:
        raise DatasetError(f"batch_size must be positive, got {batch_size}")
    sampler, sampler_generator = make_sampler(dataset, train=train, seed=seed, drop_last=drop_last,
                                              distributed=distributed, rank=rank, world_size=world_size,
                                              sampler=sampler)
    return SeededDataLoader(
        dataset,
        seed=seed,
        rank=rank if distributed else 0,
        epoch_seeded=epoch_seeded,
        sampler_generator=sampler_generator,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(worker_seed(seed, 0, rank if distributed else 0)),
        # pinned host batches let to_batch's non_blocking copies overlap the step
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Make epoch `epoch`'s order a function of (seed, epoch) only; call before iterating each epoch."""
    own = getattr(loader, "set_epoch", None)  # loader: device reseeds its sampler and its draws itself
    if own is not None:
        own(epoch)
        return
    sampler = getattr(loader, "sampler", None)  # a DALI loader has none: it reshuffles itself
    if hasattr(sampler, "set_epoch"):  # DistributedSampler shuffles with seed + epoch itself
        sampler.set_epoch(epoch)
    if isinstance(loader, SeededDataLoader) and loader.epoch_seeded:
        if loader.sampler_generator is not None:
            loader.sampler_generator.manual_seed(loader.seed + epoch)
        # Worker seeds (drawn when workers start) then also depend only on (seed, epoch, rank).
        loader.generator.manual_seed(worker_seed(loader.seed, epoch, loader.rank))
