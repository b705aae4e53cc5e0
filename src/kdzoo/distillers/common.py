"""Pieces several methods share: embeddings, spatial matching, pairwise distances, warm-up ramps."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.core.dist import all_gather_cat
from kdzoo.data.groups import MAX_GROUPS


class Embed(nn.Module):
    """Linear projection of a (flattened) feature; the losses normalise where they say so (CRD, RRD, DCD, CC)."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


def embed_pair(ctx, dim: int) -> tuple[Embed, Embed]:
    """The student's and the teacher's embedding of their pooled features into `dim` (built in that order)."""
    width = lambda shape: int(math.prod(shape[1:]))  # noqa: E731
    return Embed(width(ctx.student_shapes.pooled), dim), Embed(width(ctx.teacher_shapes.pooled), dim)


class PendingUpdate:
    """Tensors a method keeps from its loss until after the optimizer step (the backward still needs its
    buffers as they were read), handed back gathered from every process in rank order (CRD's banks, RRD's
    queue): each rank then applies the update a single process would make over the global batch."""

    def __init__(self):
        self._tensors: Optional[tuple[Tensor, ...]] = None

    def put(self, *tensors: Tensor) -> None:
        self._tensors = tuple(t.detach() for t in tensors)

    def take(self) -> Optional[tuple[Tensor, ...]]:
        """The gathered tensors (None when nothing is pending); a collective under several processes."""
        if self._tensors is None:
            return None
        tensors, self._tensors = self._tensors, None
        return tuple(all_gather_cat(t) for t in tensors)


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the larger of two maps to the smaller one's height and width."""
    ha, hb = a.shape[-1], b.shape[-1]
    if ha > hb:
        a = F.adaptive_avg_pool2d(a, b.shape[-2:])
    elif hb > ha:
        b = F.adaptive_avg_pool2d(b, a.shape[-2:])
    return a, b


def pairwise_distances(x: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix between the rows of x, with an exact zero diagonal (float32 under autocast:
    in bf16 the cancellation in |a|^2 + |b|^2 - 2ab ruins small distances)."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        sq = x.pow(2).sum(dim=1)
        prod = x @ x.t()
    dist = (sq[:, None] + sq[None, :] - 2 * prod).clamp(min=eps)
    if not squared:
        dist = dist.sqrt()
    dist = dist.clone()
    dist[range(len(x)), range(len(x))] = 0
    return dist


def warmup_factor(epoch: int, warmup: float) -> float:
    """min(epoch / warmup, 1) with mdistiller's 1-based epoch counter; `epoch` is kdzoo's 0-based one."""
    if warmup <= 0:
        return 1.0
    return min((epoch + 1) / warmup, 1.0)


@dataclass
class GroupedParams:
    """What every method on grouped batches (CKD, mixup) takes: its optional KD term's temperature and how many
    distinct groups are drawn once per run."""

    T: float = field(default=4.0, metadata={"gt": 0})
    groups: int = field(default=MAX_GROUPS, metadata={"ge": 1})


def wide(x: Tensor) -> Tensor:
    """float32 at least: losses compute in float32 under bf16 autocast; float64 inputs (parity tests) stay float64."""
    return x if x.dtype == torch.float64 else x.float()


def non_target_classes(label: Tensor, classes: int) -> Tensor:
    """(N, C - k): each row's classes but its k distinct labels (N, k), in order; what `z[mask].view(N, -1)` selects
    with a mask of the non-target entries, as a gather (a boolean mask's selection synchronises a GPU with the host).
    Each label, ascending, shifts the classes at or above it up by one."""
    n, k = label.shape
    others = torch.arange(classes - k, device=label.device).expand(n, classes - k)
    for column in label.sort(dim=1).values.unbind(1):
        others = others + (others >= column.unsqueeze(1)).long()
    return others
