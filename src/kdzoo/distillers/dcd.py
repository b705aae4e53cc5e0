"""Discriminative and consistent distillation (DCD): in-batch contrast between student and teacher embeddings with
a learnable temperature and bias, plus a consistency term between the two directions of the contrast.

Pooled features go through Linear(., feat_dim) and an L2 normalisation on each side. With
L = min(exp(tau), max_tau) * e_s e_t^T + b (B x B, student i against teacher j; tau, b learnable, init 1 and 0):
  contrastive = CE(L, arange(B)), rows as the student's distribution over the batch's teacher embeddings;
  consistency = KL(P || Q) summed over j and averaged over i, with Q_i = softmax(L[i, :]) and
                P_i = softmax(L[:, i]) (the column softmax, transposed: teacher i's distribution over students);
  loss = contrastive + alpha * consistency, alpha 0.5.

Follows giakoumoglou/distillers distillers/DCD.py (DCDLoss with trainable=True): exp(tau) is clamped to
[0, max_tau], so tau stops receiving a gradient while exp(tau) > max_tau, as there.
Under torchrun the contrast is over each process's own batch (B per process; no gathering across ranks).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import embed_pair
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError
from kdzoo.models.features import Needs


@dataclass
class DCDParams:
    feat_dim: int = 128  # embedding dimension
    init_tau: float = 1.0  # initial log-scale tau: the logits are scaled by exp(tau)
    init_b: float = 0.0  # initial bias b
    max_tau: float = 10.0  # clamp of exp(tau)
    alpha: float = 0.5  # weight of the consistency KL


def dcd_loss(e_s: Tensor, e_t: Tensor, tau: Tensor, b: Tensor, max_tau: float, alpha: float) -> Tensor:
    """DCD: contrastive CE over s_ij = e_s_i . e_t_j * min(exp(tau), max_tau) + b with the diagonal as labels, plus
    alpha times a consistency KL between the student's and teacher's similarity distributions (see the module
    docstring; giakoumoglou/distillers)."""
    logits = (e_s @ e_t.t()) * tau.exp().clamp(0, max_tau) + b
    labels = torch.arange(logits.shape[0], device=logits.device)
    contrastive = F.cross_entropy(logits, labels)
    log_q = F.log_softmax(logits, dim=1)
    p = F.softmax(logits, dim=0).t()
    consistency = F.kl_div(log_q, p, reduction="batchmean")  # sum p * (log p - log q) / B
    return contrastive + alpha * consistency


@register_method
class DCD(Method):
    name = "dcd"
    reference = "giakoumoglou/distillers"  # the code its tests compare against
    description = "discriminative and consistent distillation: in-batch contrast with learnable temperature and bias"
    paper = "Giakoumoglou & Stathaki, Discriminative and Consistent Representation Distillation, 2024"
    student_needs = Needs(pooled=True)
    teacher_needs = Needs(pooled=True)
    Params = DCDParams
    recipes = Recipes(loss={"ce": 1.0, "dcd": 1.0}, variants={"dcd_kd": {"ce": 1.0, "kd": 1.0, "dcd": 1.0}})

    def __init__(self, params: DCDParams, ctx):
        super().__init__(params, ctx)
        if params.feat_dim < 1 or params.max_tau <= 0:
            raise ConfigError("methods.dcd: feat_dim and max_tau must be positive")
        dim = params.feat_dim
        self.embed_s, self.embed_t = embed_pair(ctx, dim)
        self.tau = nn.Parameter(torch.tensor(float(params.init_tau)))
        self.b = nn.Parameter(torch.tensor(float(params.init_b)))

    def losses(self, batch, s, t, step):
        e_s = F.normalize(self.embed_s(s.pooled).float(), dim=1)
        e_t = F.normalize(self.embed_t(t.pooled).float(), dim=1)
        with torch.autocast(device_type=e_s.device.type, enabled=False):
            loss = dcd_loss(e_s, e_t, self.tau.float(), self.b.float(), self.params.max_tau, self.params.alpha)
        return {"dcd": loss}
