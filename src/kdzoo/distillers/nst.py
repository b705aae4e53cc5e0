"""Neuron selectivity transfer: squared-polynomial-kernel MMD between the channels' spatial distributions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import match_spatial
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.features import Needs

_EPS = 1e-12  # floor on a channel's spatial norm, as F.normalize


class _SelfGram(torch.autograd.Function):
    """x @ x^T for x (B, C, N); its backward is (g + g^T) @ x: one batched matmul where autograd would do two."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x @ x.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return (grad + grad.transpose(1, 2)) @ x


def _inv_norms(gram: Tensor) -> Tensor:
    """1 / max(|x_i|, eps) per channel, from the diagonal of its Gram matrix (no pass over the maps)."""
    return gram.diagonal(dim1=1, dim2=2).clamp_min(_EPS * _EPS).rsqrt()


def _cosine_kernel(dots: Tensor, ra: Tensor, rb: Tensor) -> Tensor:
    """Mean over samples and channel pairs of (a_i . b_j / (|a_i| |b_j|))^2, from the raw dot products."""
    return (dots * ra[:, :, None] * rb[:, None, :]).pow(2).mean()


def nst_pair_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """MMD^2 = mean k(t, t) + mean k(s, s) - 2 mean k(s, t), k(x, y) = (x . y)^2, over the spatially
    L2-normalised channel maps x (after pooling the larger map to the smaller one's size).

    The normalisation is applied to the small (C x C) kernel matrices rather than to the (C x H*W) maps, the norms
    read off the Gram diagonals. With this kernel the feature map of x is x x^T, so the value is also
    ||S^T S / Cs - T^T T / Ct||_F^2 per sample (S the Cs x N normalised map): spatial Gram matrices, cheaper where
    a map has more channels than positions (deep stages). Whichever costs fewer multiplications is used; the value
    is the same.
    """
    if f_s.shape[-2:] != f_t.shape[-2:]:
        f_s, f_t = match_spatial(f_s.float(), f_t.float())  # pool in float32
    s, t = f_s.float().flatten(2), f_t.float().flatten(2)
    cs, ct, n = s.shape[1], t.shape[1], s.shape[2]
    if n * (cs + ct) < cs * cs + ct * ct + cs * ct:
        s, t = F.normalize(s, dim=2, eps=_EPS), F.normalize(t, dim=2, eps=_EPS)
        gram_s = _SelfGram.apply(s.transpose(1, 2)) / cs
        gram_t = t.transpose(1, 2) @ t / ct
        return (gram_s - gram_t).pow(2).sum((1, 2)).mean()
    k_tt = t @ t.transpose(1, 2)
    k_ss = _SelfGram.apply(s)
    rs, rt = _inv_norms(k_ss), _inv_norms(k_tt)
    return (_cosine_kernel(k_tt, rt, rt) + _cosine_kernel(k_ss, rs, rs)
            - 2 * _cosine_kernel(s @ t.transpose(1, 2), rs, rt))


def nst_loss(g_s: list[Tensor], g_t: list[Tensor]) -> Tensor:
    """Sum of the per-pair MMDs over the zipped stage lists (shortest wins), in float32 (also under autocast)."""
    with torch.autocast(g_s[0].device.type, enabled=False):
        return sum(nst_pair_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t))


@register_method
class NST(Method):
    name = "nst"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "neuron selectivity transfer: polynomial-kernel MMD between channel activation maps"
    paper = "Huang & Wang, Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, 2017"
    student_needs = Needs(stages=True)
    teacher_needs = Needs(stages=True)
    recipes = Recipes(loss={"ce": 1.0, "nst": 50.0})

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        s_stages, t_stages = ctx.student_shapes.stages, ctx.teacher_shapes.stages
        if not s_stages or not t_stages or len(s_stages) < 2 or len(t_stages) < 2:
            raise IncompatiblePairError("nst: both networks need a stem and at least one stage map")

    def losses(self, batch, s, t, step):
        return {"nst": nst_loss(s.stages[1:], t.stages[1:])}
