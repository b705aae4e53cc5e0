"""Probabilistic knowledge transfer: KL between the cosine-similarity distributions of pooled features."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.registry import register_method
from kdzoo.models.features import Needs


def _conditional_probabilities(f: Tensor, eps: float) -> Tensor:
    """Cosine similarities of the rows mapped to [0, 1], each row normalised to sum 1."""
    f = f.float().flatten(1)
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    sim = (f @ f.t() + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


def pkt_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """mean over all (i, j) of P_t * log((P_t + eps) / (P_s + eps)), in float32 (also under autocast)."""
    with torch.autocast(f_s.device.type, enabled=False):
        p_s = _conditional_probabilities(f_s, eps)
        p_t = _conditional_probabilities(f_t, eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@dataclass
class PKTParams:
    eps: float = 1e-7  # added to the norms and inside the log (author's code)


@register_method
class PKT(Method):
    name = "pkt"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "probabilistic knowledge transfer: cosine-similarity distributions of the pooled features"
    paper = "Passalis & Tefas, Learning Deep Representations with Probabilistic Knowledge Transfer, ECCV 2018"
    student_needs = Needs(pooled=True)
    teacher_needs = Needs(pooled=True)
    Params = PKTParams
    recipes = Recipes(loss={"ce": 1.0, "pkt": 30000.0})

    def losses(self, batch, s, t, step):
        return {"pkt": pkt_loss(s.pooled, t.pooled, self.params.eps)}
