"""BYOL with i-Mix (Grill et al. 2020; Lee et al., i-Mix, ICLR 2021; kibok90/imix, DS-SRD's self-supervised
teacher): the online network (encoder + projector, the bound `student`) and this method's predictor map one view
to q; the target network (an EMA of encoder + projector, the bound `teacher`) maps the other view to k, without
gradient. With q, k L2-normalised and i-Mix mixing only the online view, x~ = lam_i x_i + (1 - lam_i) x_perm(i),
lam_i = max(b, 1 - b), b ~ Beta(1, 1) per sample, one permutation per batch:

    byol = mean_i (2 - 2 (lam_i q_i . k_i + (1 - lam_i) q_i . k_perm(i)))

no temperature; `imix: false` is plain BYOL (lam = 1); `symmetric: true` adds the same term with the views
swapped. No labels are read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.core.host_sync import to_device
from kdzoo.distillers.base import Method, Recipes, Requires
from kdzoo.distillers.registry import register_method
from kdzoo.models.features import Needs


@dataclass
class ByolParams:
    imix: bool = True
    symmetric: bool = False
    target_view: str = "x2"


def mlp_head(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """Linear -> BN -> ReLU -> Linear (BYOL's projector and predictor)."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim_out))


def imix_lambdas(n: int, device) -> tuple[Tensor, Tensor]:
    """(lam (n,), perm (n,)): lam_i = max(b, 1 - b), b ~ Beta(1, 1), and one permutation."""
    b = torch.rand(n)
    return to_device(torch.maximum(b, 1 - b), device), to_device(torch.randperm(n), device)


def byol_imix_loss(q: Tensor, k: Tensor, lam: Tensor, perm: Tensor) -> Tensor:
    """BYOL with i-Mix: L = mean(2 - 2 (lam <q, k> + (1 - lam) <q, k[perm]>)) over L2-normalised predictions q and
    targets k, where row i of the input was mixed with row perm[i] at weight lam (kibok90/imix, DS-SRD)."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    agree = lam * (q * k).sum(1) + (1 - lam) * (q * k[perm]).sum(1)
    return (2 - 2 * agree).mean()


@register_method
class Byol(Method):
    name = "byol"
    reference = "AiXia520/DS-SRD (BYOL / i-Mix)"  # the code its tests compare against
    description = "BYOL (+ i-Mix): predictor(online(view 1)) against the EMA target's view 2; no labels"
    paper = "Grill et al., BYOL, NeurIPS 2020; Lee et al., i-Mix, ICLR 2021"
    student_needs = Needs(logits=True)  # the online projection
    teacher_needs = Needs(logits=True)  # the target projection
    requires = Requires(labels=False, live_teacher=True)
    recipes = Recipes(apart=True)
    Params = ByolParams

    def __init__(self, params: ByolParams, ctx):
        super().__init__(params, ctx)
        dim = int(ctx.student_shapes.logits[-1])
        hidden = int(ctx.student_shapes.pooled[-1]) if ctx.student_shapes.pooled is not None else 4 * dim
        self.predictor = mlp_head(dim, hidden, dim)

    def teacher_views(self) -> tuple[str, ...]:
        views = (self.params.target_view,)
        return views + (self.binding.view,) if self.params.symmetric else views

    def _term(self, ctx, online_view: str, target_view: str, suffix: str) -> Tensor:
        b = self.binding
        x = ctx.batch.view(online_view)
        lam: Optional[Tensor] = None
        if self.params.imix:
            lam, perm = imix_lambdas(x.shape[0], x.device)
            shape = (-1,) + (1,) * (x.dim() - 1)
            x = lam.view(shape).to(x.dtype) * x + (1 - lam.view(shape).to(x.dtype)) * x[perm]
            online_view = ctx.add_view(f"{b.term(self.name)}.mix{suffix}", x)
        else:
            perm = torch.arange(x.shape[0], device=x.device)
            lam = torch.ones(x.shape[0], device=x.device)
        q = self.predictor(ctx.features(b.student, online_view).logits)
        k = ctx.features(b.teacher, target_view).logits.detach()
        return byol_imix_loss(q, k, lam, perm)

    def step_losses(self, ctx) -> dict[str, Tensor]:
        b, p = self.binding, self.params
        loss = self._term(ctx, b.view, p.target_view, "")
        if p.symmetric:
            loss = loss + self._term(ctx, p.target_view, b.view, "2")
        return {b.term(self.name): loss}
