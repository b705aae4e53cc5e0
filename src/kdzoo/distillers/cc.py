"""Correlation congruence (RepDistiller's form): correlated embedding gaps of consecutive samples."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import embed_pair
from kdzoo.distillers.registry import register_method
from kdzoo.models.features import Needs


def cc_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """d = |e_s - e_t|; mean over i < B-1 of sum_c d[i, c] * d[i+1, c] (0 for a batch of one)."""
    d = (e_s.float() - e_t.float()).abs()
    if d.shape[0] < 2:
        return d.sum() * 0.0
    return (d[:-1] * d[1:]).sum(1).mean()


@dataclass
class CCParams:
    feat_dim: int = 128  # width of the two linear embeds (RepDistiller --feat_dim)


@register_method
class CC(Method):
    name = "cc"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "correlation congruence: linear embeds of the pooled features, correlated sample gaps"
    paper = "Peng et al., Correlation Congruence for Knowledge Distillation, ICCV 2019"
    student_needs = Needs(pooled=True)
    teacher_needs = Needs(pooled=True)
    Params = CCParams
    recipes = Recipes(loss={"ce": 1.0, "cc": 0.02})

    def __init__(self, params: CCParams, ctx):
        super().__init__(params, ctx)
        # RepDistiller's LinearEmbed: a Linear layer without normalisation, one per network, both trained.
        self.embed_s, self.embed_t = embed_pair(ctx, params.feat_dim)

    def losses(self, batch, s, t, step):
        return {"cc": cc_loss(self.embed_s(s.pooled), self.embed_t(t.pooled))}
