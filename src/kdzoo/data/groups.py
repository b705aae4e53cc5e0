"""Grouped training batches (comparative sampling, CKD; input mixing, mixup): every sample of the stream is a
group of training images split into named parts, e.g. CKD's P positives and N negatives or mixup's two members.

A method declares its `GroupLayout`; the groups (100,000 distinct ones by default, all of them when fewer exist)
are drawn once per run and saved with it. A batch of B groups carries one view per part (the members of that
part of every group, B x size images, in group order), the dataset index and label of every row of each part,
and, for a mixing layout, a `mix` view: the parts' images weighted by one Dirichlet(1, ..., 1) draw per batch
(Beta(1, 1) for two). An "epoch" is one pass over the *images*' worth of groups (ceil(images / batch) steps:
CKD validates that often); the epochs walk one seeded permutation of the groups after another.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations, permutations
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from kdzoo.core.host_sync import to_device
from kdzoo.errors import ConfigError

MAX_GROUPS = 100_000


@dataclass(frozen=True)
class GroupLayout:
    """parts: (view name, members) per part; each part is an unordered set of distinct images, the parts are
    disjoint. mix: the name of the mixed view, or None."""

    parts: tuple[tuple[str, int], ...]
    mix: Optional[str] = None
    count: int = MAX_GROUPS

    @property
    def size(self) -> int:
        return sum(n for _, n in self.parts)

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.parts) + ((self.mix,) if self.mix else ())


def possible_groups(n: int, sizes: tuple[int, ...]) -> int:
    total, left = 1, n
    for k in sizes:
        total *= math.comb(left, k)
        left -= k
    return total


def draw_groups(n: int, layout: GroupLayout, seed: int) -> torch.LongTensor:
    """[count, size] distinct groups of indices in [0, n): each part sorted, parts in layout order. Rejection
    sampling when at least 5x `count` groups exist, else a random choice among all of them (CKD's rule)."""
    sizes = tuple(k for _, k in layout.parts)
    if n < layout.size:
        raise ConfigError(f"a group of {layout.size} images needs at least {layout.size} training images, got {n}")
    rng = np.random.default_rng(seed)
    total = possible_groups(n, sizes)
    if total >= 5 * layout.count:
        seen: set[tuple[int, ...]] = set()
        rows = []
        while len(rows) < layout.count:
            pick = rng.choice(n, size=layout.size, replace=False)
            group = _canonical(pick, sizes)
            if group not in seen:
                seen.add(group)
                rows.append(group)
        return torch.tensor(rows, dtype=torch.long)
    every = [_canonical(np.array(p), sizes) for p in _all_groups(n, sizes)]
    if len(every) > layout.count:
        every = [every[i] for i in sorted(rng.choice(len(every), size=layout.count, replace=False))]
    return torch.tensor(every, dtype=torch.long)


def _canonical(pick: np.ndarray, sizes: tuple[int, ...]) -> tuple[int, ...]:
    out, at = [], 0
    for k in sizes:
        out.extend(sorted(int(i) for i in pick[at:at + k]))
        at += k
    return tuple(out)


def _all_groups(n: int, sizes: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Every group once: ordered choices of disjoint sets (few images only: CKD enumerates them too)."""
    if all(k == 1 for k in sizes):
        yield from permutations(range(n), len(sizes))
        return
    for combo in combinations(range(n), sum(sizes)):
        yield from _splits(combo, sizes)


def _splits(items: tuple[int, ...], sizes: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    if not sizes:
        yield ()
        return
    for first in combinations(items, sizes[0]):
        rest = tuple(i for i in items if i not in first)
        for tail in _splits(rest, sizes[1:]):
            yield first + tail


class GroupDataset(Dataset):
    """Item g: (the images of group g stacked [size, ...], their labels [size], their dataset indices [size])."""

    def __init__(self, images: Dataset, groups: torch.LongTensor):
        self.images, self.groups = images, groups
        self.info = images.info
        self.targets = images.targets  # of the images (what methods' setup reads), not of the groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, g: int):
        members = self.groups[g]
        items = [self.images[int(i)] for i in members]
        return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items]), members


class GroupSampler(Sampler[int]):
    """Group ids for one epoch of `steps * batch_size * world_size` groups: epoch e continues where e - 1
    stopped in a stream of seeded permutations of all groups; rank r takes every world_size-th one."""

    def __init__(self, num_groups: int, images: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        self.num_groups, self.seed, self.rank, self.world_size = num_groups, seed, rank, world_size
        self.steps = max(1, math.ceil(images / (batch_size * world_size)))
        self.per_rank = self.steps * batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        span = self.per_rank * self.world_size
        start = self.epoch * span
        ids, cached = [], {}
        for q in range(start + self.rank, start + span, self.world_size):
            p = q // self.num_groups
            if p not in cached:
                cached[p] = torch.randperm(self.num_groups, generator=torch.Generator().manual_seed(self.seed + p))
            ids.append(int(cached[p][q % self.num_groups]))
        return iter(ids)


def group_batch(raw: Any, layout: GroupLayout, device: torch.device, channels_last: bool = False):
    """A loader batch of groups -> Batch with one view per part (+ the mixed view)."""
    from kdzoo.core.batch import Batch  # methods import this module for GroupLayout

    images, labels, index = (t.to(device, non_blocking=True) for t in raw[:3])
    views, view_index, view_targets, at = {}, {}, {}, 0
    for name, k in layout.parts:
        part = images[:, at:at + k].reshape(-1, *images.shape[2:])
        if channels_last and part.dim() == 4:
            part = part.contiguous(memory_format=torch.channels_last)
        views[name] = part
        view_index[name] = index[:, at:at + k].reshape(-1)
        view_targets[name] = labels[:, at:at + k].reshape(-1)
        at += k
    weights = None
    if layout.mix:
        weights = to_device(torch.distributions.Dirichlet(torch.ones(len(layout.parts))).sample(), device)
        views[layout.mix] = sum(w * views[name] for w, (name, _) in zip(weights, layout.parts))
    first = layout.parts[0][0]
    return Batch(inputs=views[first], targets=view_targets[first], index=view_index[first], views=views,
                 mix_lambda=weights, groups=layout, view_index=view_index, view_targets=view_targets)


def one_layout(methods) -> Optional[GroupLayout]:
    """The group layout the methods ask for (they must agree), or None."""
    asked = {}
    for m in methods:
        layout = m.group_layout()
        if layout is not None:
            asked.setdefault(layout, m.binding.term(m.name))
    if len(asked) > 1:
        names = list(asked.values())
        raise ConfigError(f"loss: methods {names[0]} and {names[1]} ask for different groups of training images")
    return next(iter(asked), None)
