"""Attention transfer: match normalised spatial attention maps (channel mean of |f|^p) of every stage pair."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import match_spatial
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.features import Needs


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """a(f) = L2-normalise(mean over channels of f^p), flattened to (B, H*W), in float32.

    For p = 2 the channel mean is a float32 vector norm squared over C: the same value without a float32 copy of
    the (possibly bf16) map and with a cheaper backward (half the step overhead of pow + mean on CIFAR shapes).
    """
    if p == 2:
        energy = torch.linalg.vector_norm(f, 2, dim=1, dtype=torch.float32).pow(2) / f.shape[1]
    else:
        energy = f.float().pow(p).mean(1)
    return F.normalize(energy.flatten(1), dim=1)


def at_pair_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    """mean((a(f_s) - a(f_t))^2) after pooling the larger map to the smaller one's size."""
    if f_s.shape[-2:] != f_t.shape[-2:]:
        f_s, f_t = match_spatial(f_s.float(), f_t.float())  # pool in float32
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


def at_loss(g_s: list[Tensor], g_t: list[Tensor], p: float = 2.0) -> Tensor:
    """Sum of the per-pair losses over the zipped stage lists (shortest wins)."""
    return sum(at_pair_loss(f_s, f_t, p) for f_s, f_t in zip(g_s, g_t))


@dataclass
class ATParams:
    p: float = 2.0  # power of the activations in the attention map (RepDistiller Attention(p=2))


@register_method
class AT(Method):
    name = "at"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "attention transfer: normalised spatial attention maps of the stage outputs"
    paper = "Zagoruyko & Komodakis, Paying More Attention to Attention, ICLR 2017"
    student_needs = Needs(stages=True)
    teacher_needs = Needs(stages=True)
    Params = ATParams
    recipes = Recipes(loss={"ce": 1.0, "at": 1000.0})

    def __init__(self, params: ATParams, ctx):
        super().__init__(params, ctx)
        s_stages, t_stages = ctx.student_shapes.stages, ctx.teacher_shapes.stages
        if not s_stages or not t_stages or len(s_stages) < 2 or len(t_stages) < 2:
            raise IncompatiblePairError("at: both networks need a stem and at least one stage map")

    def losses(self, batch, s, t, step):
        return {"at": at_loss(s.stages[1:], t.stages[1:], self.params.p)}
