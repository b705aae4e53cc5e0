"""Relational representation distillation (RRD): match the student's and the teacher's similarity distributions
over a FIFO queue of past teacher embeddings.

Pooled features go through Linear(., feat_dim) and an L2 normalisation on each side. With Q the queue (nce_k rows)
the loss is the cross-entropy -sum_k softmax(e_t Q^T / nce_t_t)_k log softmax(e_s Q^T / nce_t_s)_k averaged over
the batch, the teacher distribution being a fixed target; the batch's teacher embeddings are then enqueued.

Follows giakoumoglou/distillers distillers/RRD.py (RRDLoss, enqueue after the loss, temperatures 0.04 / 0.10 as
behind the published table). As there, the queue starts as randn(nce_k, feat_dim) normalised along dim 0 (each
column has unit norm, so the initial rows are short) until real teacher embeddings replace it. The teacher-side
embedding receives no gradient in the original (its scores are detached and the queue is a buffer), so it stays
at its random initialisation there; here it is frozen explicitly (requires_grad False), which is the same.

Under several processes (torchrun) every rank enqueues every process's teacher embeddings, rank 0's first, so
all ranks hold the same queue, equal to a single process's over the global batch; the queue is listed in
`synced_buffers`, which keeps it out of DDP's per-forward broadcast of rank 0's buffers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import PendingUpdate, embed_pair
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError
from kdzoo.models.features import Needs


@dataclass
class RRDParams:
    feat_dim: int = 128  # embedding dimension
    nce_k: int = 16384  # queue length (teacher embeddings)
    nce_t_s: float = 0.04  # student temperature
    nce_t_t: float = 0.10  # teacher (target) temperature


def relational_loss(e_s: Tensor, e_t: Tensor, queue: Tensor, t_s: float, t_t: float) -> Tensor:
    """Cross-entropy between softmax(e_t Q^T / t_t) (detached target) and softmax(e_s Q^T / t_s), batch mean."""
    target = F.softmax((e_t @ queue.t()).detach() / t_t, dim=1)
    log_p = F.log_softmax((e_s @ queue.t()) / t_s, dim=1)
    return -(target * log_p).sum(dim=1).mean()


@torch.no_grad()
def enqueue(queue: Tensor, ptr: Tensor, keys: Tensor) -> None:
    """Write `keys` into the ring buffer at `ptr` (wrapping around) and advance it, as if one key at a time."""
    size, count = queue.shape[0], keys.shape[0]
    kept = min(count, size)  # more keys than slots: only the last `size` survive
    slots = (ptr + (count - kept) + torch.arange(kept, device=queue.device)) % size
    queue.index_copy_(0, slots, keys[count - kept:].to(queue.dtype))
    ptr.copy_((ptr + count) % size)


@register_method
class RRD(Method):
    name = "rrd"
    reference = "giakoumoglou/distillers"  # the code its tests compare against
    description = "relational representation distillation: similarity distributions over a queue of teacher embeddings"
    paper = "Giakoumoglou & Stathaki, Relational Representation Distillation, 2024"
    student_needs = Needs(pooled=True)
    teacher_needs = Needs(pooled=True)
    Params = RRDParams
    recipes = Recipes(loss={"ce": 1.0, "rrd": 1.0}, variants={"rrd_kd": {"ce": 1.0, "kd": 1.0, "rrd": 1.0}})
    synced_buffers = ("queue", "queue_ptr")  # equal on every process through gathered updates: not broadcast by DDP

    def __init__(self, params: RRDParams, ctx):
        super().__init__(params, ctx)
        if params.feat_dim < 1 or params.nce_k < 1:
            raise ConfigError("methods.rrd: feat_dim and nce_k must be positive")
        if params.nce_t_s <= 0 or params.nce_t_t <= 0:
            raise ConfigError("methods.rrd: nce_t_s and nce_t_t must be positive")
        dim = params.feat_dim
        self.embed_s, self.embed_t = embed_pair(ctx, dim)
        self.embed_t.requires_grad_(False)  # never receives a gradient in the original: a fixed random projection
        self.register_buffer("queue", F.normalize(torch.randn(params.nce_k, dim), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._pending = PendingUpdate()

    def embed(self, s_pooled: Tensor, t_pooled: Tensor) -> tuple[Tensor, Tensor]:
        return (F.normalize(self.embed_s(s_pooled).float(), dim=1),
                F.normalize(self.embed_t(t_pooled).float(), dim=1))

    def losses(self, batch, s, t, step):
        e_s, e_t = self.embed(s.pooled, t.pooled)
        with torch.autocast(device_type=e_s.device.type, enabled=False):
            loss = relational_loss(e_s, e_t, self.queue, self.params.nce_t_s, self.params.nce_t_t)
        # The backward still needs the queue as it is now: enqueue after the optimizer step.
        self._pending.put(e_t)
        return {"rrd": loss}

    def after_step(self) -> None:
        pending = self._pending.take()  # every process's keys in rank order: all ranks enqueue the same keys
        if pending is not None:
            enqueue(self.queue, self.queue_ptr, pending[0])
