"""Contrastive representation distillation (CRD): NCE against momentum memory banks of the whole training set.

Pooled features of both networks go through a linear embedding to `feat_dim` and an L2 normalisation. Every
training sample has one row in a student bank and one in a teacher bank. For a batch sample with dataset index i
and `nce_k` negative indices drawn from samples of other classes, the student embedding is scored against the
teacher bank rows [i, negatives] and the teacher embedding against the student bank rows; each side's scores
exp(v.m / nce_t) / Z feed the NCE criterion with a uniform noise distribution P_n = 1/n_data. After the step the
banks' rows of the batch move to momentum * old + (1 - momentum) * new and are renormalised.

Under several processes (torchrun) the bank update and the Z constants use every process's batch (indices and
embeddings gathered in rank order), so every rank applies the update a single process would over the global
batch (rank 0's samples, then rank 1's, ...) and all ranks hold the same banks; the banks are listed in
`synced_buffers`, which keeps them out of DDP's per-forward broadcast of rank 0's buffers. The negatives are
drawn per process, against the whole (shared) banks.

Follows HobbitLong/RepDistiller crd/criterion.py and crd/memory.py (mode "exact": the positive is the sample
itself). Differences: negatives are drawn with replacement on the device (the original draws without
replacement in the data loader when nce_k is at most the number of other-class samples, e.g. CIFAR-100), and
the scores come from one (B x n_data) matmul plus a gather instead of gathering (B, K+1, feat_dim) bank rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.core.dist import all_gather_cat
from kdzoo.distillers.base import Method, Recipes, Requires
from kdzoo.distillers.common import PendingUpdate, embed_pair
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError, KdzooError
from kdzoo.models.features import Needs

EPS = 1e-7  # RepDistiller's ContrastLoss constant


@dataclass
class CRDParams:
    feat_dim: int = 128  # embedding dimension (size of the bank rows)
    nce_k: int = 16384  # negatives per anchor
    nce_t: float = 0.07  # temperature of exp(v.m / T)
    nce_m: float = 0.5  # momentum of the memory-bank update
    # where negatives come from: other classes (RepDistiller), or any other image ("instance": no labels read, as
    # self-supervised distillation needs; DS-SRD's self-supervised code drew them by class label)
    negatives: str = "class"


def class_blocks(targets: Tensor, num_classes: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Dataset indices sorted by class and written twice (2n entries), each class's count and start offset."""
    targets = targets.long().flatten()
    order = torch.argsort(targets, stable=True)
    counts = torch.bincount(targets, minlength=num_classes or 0)
    starts = torch.cumsum(counts, 0) - counts
    return torch.cat([order, order]), counts, starts


def sample_negatives(labels: Tensor, order: Tensor, counts: Tensor, starts: Tensor, k: int,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """(B, k) dataset indices drawn uniformly, with replacement, among the samples whose class differs from labels[b].

    With `order` the class-sorted indices written twice (`class_blocks`), the n - n_c samples of the classes other
    than c are the contiguous run order[start_c + n_c : start_c + n]: a draw is one offset into that run.
    """
    n = order.numel() // 2
    n_c = counts[labels].unsqueeze(1)
    # floor(u * span) with u = bits / 2^b, b random bits: the product stays below 2^63, and the draw is uniform
    # over [0, span) up to a relative bias span / 2^b (< 1e-9 for CIFAR-100); integer ops only.
    b = 63 - n.bit_length()
    r = torch.randint(0, 2**b, (labels.shape[0], k), device=order.device, generator=generator)
    r *= n - n_c
    r >>= b
    r += starts[labels].unsqueeze(1) + n_c
    return order.index_select(0, r.flatten()).view(r.shape)


def contrast_scores(anchor: Tensor, bank: Tensor, idx: Tensor) -> Tensor:
    """scores[b, j] = bank[idx[b, j]] . anchor[b], shape idx.shape = (B, J).

    Computed as the (B x n_data) product anchor @ bank^T and a gather, which reads the bank once instead of
    copying B * J rows (~0.5 GB per side for CIFAR-100); when n_data exceeds J * dim the direct gather is the
    smaller of the two.
    """
    n, dim = bank.shape
    if n <= idx.shape[1] * dim:
        return torch.gather(anchor @ bank.t(), 1, idx)
    return gather_scores(anchor, bank, idx)


def gather_scores(anchor: Tensor, bank: Tensor, idx: Tensor) -> Tensor:
    """The straightforward form: gather the rows, then a batched dot product (RepDistiller's bmm)."""
    rows = bank.index_select(0, idx.flatten()).view(idx.shape[0], idx.shape[1], bank.shape[1])
    return torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2)


def nce_loss_scores(s_pos: Tensor, s_neg: Tensor, log_z: Tensor, n_data: int) -> Tensor:
    """RepDistiller's ContrastLoss (NCE) of x = exp(s - log Z) from the scaled scores s = v.m / T (positives (B,),
    negatives (B, K)).

    In log space: with c = K P_n + eps, log(x + c) = log c + softplus(log x - log c), so
    log D1 = log x_pos - log c - softplus(log x_pos - log c) and log D0 = log(K P_n) - log c - softplus(log x - log c);
    two passes over the (B, K) scores instead of a chain of exp/div/add/log, and no overflow of exp.
    """
    b, m = s_neg.shape
    m_pn = m / float(n_data)
    log_c = math.log(m_pn + EPS)
    shift = log_z + log_c
    log_d1 = (s_pos - shift) - F.softplus(s_pos - shift)
    log_d0_sum = b * m * (math.log(m_pn) - log_c) - F.softplus(s_neg - shift).sum()
    return -(log_d1.sum() + log_d0_sum) / b


def log_sum_exp(s_pos: Tensor, s_neg: Tensor) -> Tensor:
    """log of the sum of exp over the positives and negatives together."""
    return torch.logaddexp(torch.logsumexp(s_pos.flatten(), 0), torch.logsumexp(s_neg.flatten(), 0))


def log_mean_exp(s_pos: Tensor, s_neg: Tensor) -> Tensor:
    """log of the mean of exp over the positives and negatives together (the original's out.mean())."""
    return log_sum_exp(s_pos, s_neg) - math.log(s_pos.numel() + s_neg.numel())


def global_log_mean_exp(s_pos: Tensor, s_neg: Tensor) -> Tensor:
    """`log_mean_exp` over every process's scores together (a collective); the same value in one process."""
    total = log_sum_exp(s_pos, s_neg)
    count = total.new_tensor(float(s_pos.numel() + s_neg.numel()))
    parts = all_gather_cat(torch.stack([total, count]).unsqueeze(0))  # (world, 2): log-sum-exp, count
    return torch.logsumexp(parts[:, 0], 0) - math.log(float(parts[:, 1].sum()))


@torch.no_grad()
def momentum_update(bank: Tensor, idx: Tensor, values: Tensor, momentum: float) -> None:
    """bank[idx] <- normalise(momentum * bank[idx] + (1 - momentum) * values), row-wise L2."""
    rows = bank.index_select(0, idx).mul_(momentum).add_(values.to(bank.dtype), alpha=1 - momentum)
    rows = rows / rows.pow(2).sum(1, keepdim=True).sqrt()
    bank.index_copy_(0, idx, rows)


def _dim(shape) -> int:
    return int(math.prod(shape[1:]))


@register_method
class CRD(Method):
    name = "crd"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "contrastive representation distillation: NCE against momentum memory banks of every sample"
    paper = "Tian et al., Contrastive Representation Distillation, ICLR 2020"
    student_needs = Needs(pooled=True)
    teacher_needs = Needs(pooled=True)
    requires = Requires(index=True)
    recipes = Recipes(loss={"ce": 1.0, "crd": 0.8}, variants={"crd_kd": {"ce": 1.0, "kd": 1.0, "crd": 0.8}})
    Params = CRDParams
    # Equal on every process by construction (the tables) or by gathered updates (banks, Z): not broadcast by DDP.
    synced_buffers = ("labels", "order", "counts", "starts", "memory_s", "memory_t", "z_s", "z_t")

    def __init__(self, params: CRDParams, ctx):
        super().__init__(params, ctx)
        if params.feat_dim < 1 or params.nce_k < 1:
            raise ConfigError("methods.crd: feat_dim and nce_k must be positive")
        if params.nce_t <= 0 or not 0 <= params.nce_m < 1:
            raise ConfigError("methods.crd: nce_t must be positive and nce_m in [0, 1)")
        if params.negatives not in ("class", "instance"):
            raise ConfigError(f"methods.crd.negatives: {params.negatives!r}; use class or instance")
        targets = torch.as_tensor(ctx.train_targets).long().flatten().cpu()
        if params.negatives == "instance":  # every image its own block: negatives are all the other images
            targets = torch.arange(targets.numel())
        n_data = targets.numel()
        order, counts, starts = class_blocks(targets)
        if n_data == 0 or int(counts.max()) == n_data:
            raise KdzooError("crd: the training set needs samples of at least two classes (negatives come from "
                             "other classes)")
        self.n_data = n_data
        dim = params.feat_dim
        self.embed_s, self.embed_t = embed_pair(ctx, dim)
        # Class-sorted sampling tables: derived from the training labels, rebuilt identically on resume.
        self.register_buffer("labels", targets, persistent=False)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("counts", counts, persistent=False)
        self.register_buffer("starts", starts, persistent=False)
        # Memory banks (student, teacher), uniform in [-stdv, stdv] as the original; Z constants (-1 = unset).
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n_data, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        self._pending = PendingUpdate()
        self._z_set = False  # host-side cache of "both Z constants are set"

    def reads_labels(self) -> bool:
        return self.params.negatives == "class"

    def embed(self, s_pooled: Tensor, t_pooled: Tensor) -> tuple[Tensor, Tensor]:
        """L2-normalised float32 embeddings of both sides (the linear layers may run under autocast)."""
        return (F.normalize(self.embed_s(s_pooled).float(), dim=1),
                F.normalize(self.embed_t(t_pooled).float(), dim=1))

    def negatives(self, index: Tensor) -> Tensor:
        """(B, nce_k) indices of samples of other classes than each batch sample's."""
        with torch.no_grad():
            return sample_negatives(self.labels[index], self.order, self.counts, self.starts, self.params.nce_k)

    def contrast_indices(self, index: Tensor) -> Tensor:
        """(B, K+1): each sample's own index (RepDistiller's "exact" mode), then its negatives."""
        return torch.cat([index.unsqueeze(1), self.negatives(index)], dim=1)

    def _scores(self, anchor: Tensor, bank: Tensor, index: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        pos = (anchor * bank.index_select(0, index)).sum(1)
        return pos, contrast_scores(anchor, bank, neg)

    def _log_z(self, z: Tensor, s_pos: Tensor, s_neg: Tensor) -> Tensor:
        """log Z, with Z = mean(exp(v.m / T)) * n_data set from the first (global) batch and then fixed."""
        if self._z_set:
            return z.log()
        with torch.no_grad():
            value = torch.where(z < 0, torch.exp(global_log_mean_exp(s_pos, s_neg) + math.log(self.n_data)), z)
            z.copy_(value)
            return value.log()

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._z_set = False  # the loaded Z may be unset (-1): look again at the next batch

    def losses(self, batch, s, t, step):
        if batch.index is None:
            raise KdzooError("crd: batches carry no dataset indices (the regime must wrap the training set)")
        index = batch.index.long()
        e_s, e_t = self.embed(s.pooled, t.pooled)
        neg = self.negatives(index)
        inv_t = 1.0 / self.params.nce_t
        with torch.autocast(device_type=e_s.device.type, enabled=False):
            # student anchored against the teacher bank (RepDistiller's out_v1), and the reverse (out_v2)
            s_pos, s_neg = self._scores(e_s * inv_t, self.memory_t, index, neg)
            t_pos, t_neg = self._scores(e_t * inv_t, self.memory_s, index, neg)
            loss = (nce_loss_scores(s_pos, s_neg, self._log_z(self.z_s, s_pos, s_neg), self.n_data)
                    + nce_loss_scores(t_pos, t_neg, self._log_z(self.z_t, t_pos, t_neg), self.n_data))
        if not self._z_set:  # one host sync per run (and per resume); later batches skip computing Z
            self._z_set = bool((self.z_s > 0) & (self.z_t > 0))
        # The backward still needs the bank rows read here: update them after the optimizer step.
        self._pending.put(index, e_s, e_t)
        return {"crd": loss}

    def after_step(self) -> None:
        pending = self._pending.take()  # every process's rows: all ranks apply the same global update
        if pending is None:
            return
        index, e_s, e_t = pending
        momentum_update(self.memory_s, index, e_s, self.params.nce_m)
        momentum_update(self.memory_t, index, e_t, self.params.nce_m)
