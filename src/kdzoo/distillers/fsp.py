"""FSP, flow of solution procedure: an init stage matches the Gram matrices between consecutive stage maps.

For each network and each adjacent pair of its stage maps (stem + stages: RepDistiller's feat[:-1]) with
F1 (B, C1, H, W) and F2 (B, C2, H, W) (the larger map average-pooled to the smaller size first), the FSP
matrix is the mean over pixels of the outer product of the channel vectors,

    G[b, i, j] = (1 / (h w)) sum_{h,w} F2[b, i, h, w] * F1[b, j, h, w]      (C2 x C1),

and the term is  fsp = sum_pairs mean_{b,i,j} (G_s - G_t)^2,  as RepDistiller's distiller_zoo/FSP.py with the
group summed as its helper/pretrain.py. The student and the teacher must have the same number of stage maps
with the same channel counts, stage by stage. FSP acts only in its init stage (`init_epochs`, default 30),
which trains the student's body (every module but the classifier) on this term alone, with weight 1 (the
published beta of 50 multiplies a zero main-stage term in RepDistiller, so it changes nothing).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdzoo.distillers.base import InitStage, Method, Recipes
from kdzoo.distillers.common import match_spatial
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.features import Needs, student_body


@dataclass
class FSPParams:
    init_epochs: int = 30  # epochs of the init stage (the only stage FSP acts in)


def fsp_matrices(maps: list[Tensor]) -> list[Tensor]:
    """The (B, C_{k+1}, C_k) FSP matrix of each adjacent pair of maps, in float32."""
    out = []
    for bottom, top in zip(maps[:-1], maps[1:]):
        bottom, top = match_spatial(bottom.float(), top.float())
        hw = bottom.shape[-1] * bottom.shape[-2]
        out.append(top.flatten(2) @ bottom.flatten(2).transpose(1, 2) / hw)
    return out


def fsp_loss(student_maps: list[Tensor], teacher_maps: list[Tensor]) -> Tensor:
    """FSP: sum over stage pairs of mean((G_s - G_t)^2), where G is the flow (Gram) matrix between the first and
    last map of a stage, pooled to a common size (RepDistiller FSP)."""
    total = None
    for g_s, g_t in zip(fsp_matrices(student_maps), fsp_matrices(teacher_maps)):
        loss = (g_s - g_t).pow(2).mean()
        total = loss if total is None else total + loss
    return total


@register_method
class FSP(Method):
    name = "fsp"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "FSP: Gram matrices between consecutive stage maps, matched in an init stage"
    paper = ("Yim et al., A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and "
             "Transfer Learning, CVPR 2017")
    student_needs = Needs(stages=True)
    teacher_needs = Needs(stages=True)
    main_stage = False
    Params = FSPParams
    recipes = Recipes(loss={"ce": 1.0, "fsp": 50.0})
    # loss: RepDistiller's -b 50; the init stage itself uses weight 1

    def __init__(self, params: FSPParams, ctx):
        super().__init__(params, ctx)
        s_c = [s[1] for s in ctx.student_shapes.stages]
        t_c = [t[1] for t in ctx.teacher_shapes.stages]
        if s_c != t_c:
            raise IncompatiblePairError(f"fsp: student and teacher stage channels must match stage by stage "
                                        f"(stem + stages): student {s_c}, teacher {t_c}")
        if len(s_c) < 2:
            raise IncompatiblePairError("fsp: needs at least two stage maps (stem + stages)")
        self._body = student_body(ctx.student)  # a plain list: the student is not registered here

    def init_stage(self):
        if self.params.init_epochs <= 0:
            return None
        return InitStage(epochs=self.params.init_epochs, modules=list(self._body), weights={"fsp": 1.0})

    def init_losses(self, batch, s, t, step):
        return {"fsp": fsp_loss(s.stages, t.stages)}

    def losses(self, batch, s, t, step):  # not called by the offline regime (main_stage False)
        return self.init_losses(batch, s, t, step)
