"""Similarity-preserving KD: match the row-normalised batch similarity (Gram) matrices of the last stage map.

Under torchrun the B x B matrices are over each process's own batch (B = the per-process batch size).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.features import Needs


def batch_similarity(f: Tensor) -> Tensor:
    """G = row-L2-normalise(F F^T), F the map flattened per sample: (B, B)."""
    flat = f.float().flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """sum((G_t - G_s)^2) / B^2, in float32 (autocast would run the Gram products in bf16)."""
    b = f_s.shape[0]
    with torch.autocast(f_s.device.type, enabled=False):
        return (batch_similarity(f_t) - batch_similarity(f_s)).pow(2).sum() / (b * b)


@register_method
class SP(Method):
    name = "sp"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "similarity-preserving KD: batch similarity matrices of the last stage map"
    paper = "Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019"
    student_needs = Needs(stages=True)
    teacher_needs = Needs(stages=True)
    recipes = Recipes(loss={"ce": 1.0, "sp": 3000.0})

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        if not ctx.student_shapes.stages or not ctx.teacher_shapes.stages:
            raise IncompatiblePairError("sp: both networks need named stage maps")

    def losses(self, batch, s, t, step):
        return {"sp": sp_loss(s.stages[-1], t.stages[-1])}
