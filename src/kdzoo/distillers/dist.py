"""DIST: distillation from a stronger teacher by matching relations, not values (Huang et al., NeurIPS 2022).

With y = softmax(z / tau): the inter-class term is 1 - mean over samples of the Pearson correlation between the
student's and the teacher's class distributions of that sample (rows); the intra-class term is the same over classes
(columns: each class's probabilities across the batch). Loss = tau^2 * (beta * inter + gamma * intra), as in the
CIFAR version of the loss (alextxu/ckd distiller_zoo/DIST.py, adapted from hunto/image_classification_sota).

DIST+ (Huang et al., DIST+: Knowledge Distillation From a Stronger Adaptive Teacher, TPAMI 2025) is `dist_plus`:
the DIST loss plus two terms on the last stage maps f (B, C, H, W) of both networks, as torchdistill's
DISTPlusLoss (yoshitomo-matsubara/torchdistill losses/mid_level.py) computes them:

    channel = mean over (b, h, w) of the Pearson correlation of f_s[b, :, h, w] and f_t[b, :, h, w]
    spatial = 1 - mean over (h, w) of the Pearson correlation, across the batch, of the channel sums at (h, w)
    L = tau^2 (beta * inter + gamma * intra) + iota * channel + kappa * spatial

The code adds the channel CORRELATION itself, not 1 - correlation as every other DIST term does, so that term
rewards decorrelated channel profiles; kdzoo follows the code that produced torchdistill's number
(`channel_term: one_minus_corr` gives 1 - correlation). torchdistill implements the loss only, not the paper's
teacher acclimation (the "adaptive teacher"), and neither does kdzoo. The two maps must have the same shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError, IncompatiblePairError
from kdzoo.models.features import Needs


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of a with the same row of b: cosine of the mean-centred rows, with the
    original's eps added to the product of the norms (so constant rows give 0, not NaN)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def pearson_clamped(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of the rows as torchdistill computes it: torch's cosine_similarity of the mean-centred
    rows, which clamps each norm below at eps instead of adding eps to their product (DISTLoss)."""
    return F.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True), dim=1, eps=eps)


def dist_parts(student_logits: Tensor, teacher_logits: Tensor, tau: float,
               pearson: Callable[[Tensor, Tensor], Tensor] = pearson_rows) -> tuple[Tensor, Tensor]:
    """(inter, intra) relation losses in at least float32, before the tau^2 scaling."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    y_s = F.softmax(student_logits.to(dtype) / tau, dim=1)
    y_t = F.softmax(teacher_logits.to(dtype) / tau, dim=1)
    inter = 1.0 - pearson(y_s, y_t).mean()
    intra = 1.0 - pearson(y_s.t(), y_t.t()).mean()
    return inter, intra


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float, gamma: float, tau: float) -> Tensor:
    """DIST: tau^2 (beta * inter + gamma * intra), where inter is 1 - Pearson correlation of the softmax(z / tau)
    rows (per sample, over classes) and intra the same per class over the batch (hunto/DIST_KD)."""
    inter, intra = dist_parts(student_logits, teacher_logits, tau)
    return tau**2 * (beta * inter + gamma * intra)


@dataclass
class DISTParams:
    beta: float = 1.0  # inter-class (per-sample) relation weight
    gamma: float = 1.0  # intra-class (per-class) relation weight
    tau: float = 4.0  # temperature (4 for CIFAR-100)


@register_method
class DIST(Method):
    name = "dist"
    reference = "hunto/DIST_KD"  # the code its tests compare against
    description = "DIST: Pearson-correlation match of inter-class and intra-class relations of softened outputs"
    paper = "Huang et al., Knowledge Distillation from A Stronger Teacher, NeurIPS 2022"
    student_needs = Needs(logits=True)
    teacher_needs = Needs(logits=True)
    Params = DISTParams
    # DIST's CIFAR-100 recipe weights CE 1 and the DIST loss 2 (hunto/DIST_KD dist_cifar.yaml: ori/kd loss weights).
    recipes = Recipes(loss={"ce": 1.0, "dist": 2.0})

    def losses(self, batch, s, t, step):
        p = self.params
        return {"dist": dist_loss(s.logits, t.logits, p.beta, p.gamma, p.tau)}


def channel_relation(f_s: Tensor, f_t: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean over (b, h, w) of the Pearson correlation across channels of f_s[b, :, h, w] and f_t[b, :, h, w], eps
    added to the square root of the product of the squared norms (torchdistill DISTPlusLoss.channel_relation)."""
    dtype = torch.promote_types(f_s.dtype, torch.float32)
    a = f_s.to(dtype) - f_s.to(dtype).mean(1, keepdim=True)
    b = f_t.to(dtype) - f_t.to(dtype).mean(1, keepdim=True)
    return ((a * b).sum(1) / (torch.sqrt((a * a).sum(1) * (b * b).sum(1)) + eps)).mean()


def spatial_relation(f_s: Tensor, f_t: Tensor) -> Tensor:
    """1 - mean over positions of the Pearson correlation, across the batch, of the maps summed over channels
    (torchdistill DISTPlusLoss.spatial_relation: the inter-class relation of the transposed (HW, B) matrices)."""
    dtype = torch.promote_types(f_s.dtype, torch.float32)
    a, b = f_s.to(dtype).sum(1).flatten(1), f_t.to(dtype).sum(1).flatten(1)
    return 1.0 - pearson_clamped(a.t(), b.t()).mean()


def dist_plus_loss(student_logits: Tensor, teacher_logits: Tensor, f_s: Tensor, f_t: Tensor, beta: float,
                   gamma: float, iota: float, kappa: float, tau: float, channel_term: str = "corr") -> Tensor:
    """tau^2 (beta inter + gamma intra) + iota * channel + kappa * spatial (torchdistill DISTPlusLoss.forward), the
    channel term the correlation itself ("corr", the code) or 1 - correlation ("one_minus_corr"); every Pearson
    correlation as torchdistill's (`pearson_clamped`)."""
    channel = channel_relation(f_s, f_t)
    if channel_term == "one_minus_corr":
        channel = 1.0 - channel
    inter, intra = dist_parts(student_logits, teacher_logits, tau, pearson_clamped)
    return tau**2 * (beta * inter + gamma * intra) + iota * channel + kappa * spatial_relation(f_s, f_t)


@dataclass
class DISTPlusParams:
    beta: float = 2.0  # inter-class relation weight (torchdistill's DIST+ config)
    gamma: float = 2.0  # intra-class relation weight
    iota: float = 1.0  # channel-relation weight
    kappa: float = 1.0  # spatial-relation weight
    tau: float = 1.0  # temperature (the ImageNet config's)
    channel_term: Literal["corr", "one_minus_corr"] = "corr"  # corr: the code adds the correlation itself


@register_method
class DISTPlus(Method):
    name = "dist_plus"
    reference = "yoshitomo-matsubara/torchdistill"  # the code its tests compare against
    description = "DIST+: DIST plus channel and spatial Pearson relations of the last stage maps"
    paper = "Huang et al., DIST+: Knowledge Distillation From a Stronger Adaptive Teacher, TPAMI 2025"
    student_needs = Needs(logits=True, stages=True)
    teacher_needs = Needs(logits=True, stages=True)
    Params = DISTPlusParams
    # torchdistill configs/sample/ilsvrc2012/dist_plus: CE 1 + DISTPlusLoss 2 (the only published recipe)
    # torchdistill's DIST+ weights; its map terms need equal last stage maps (no adapter): pairs A-E of the table
    recipes = Recipes(loss={"ce": 1.0, "dist_plus": 2.0},
                      pairs=(("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"),
                             ("resnet110", "resnet32"), ("vgg13", "vgg8")))

    def __init__(self, params: DISTPlusParams, ctx):
        super().__init__(params, ctx)
        if ctx.teacher_shapes is None or not ctx.teacher_shapes.stages or not ctx.student_shapes.stages:
            raise IncompatiblePairError("dist_plus: both networks need named stage maps")
        s_shape, t_shape = tuple(ctx.student_shapes.stages[-1][1:]), tuple(ctx.teacher_shapes.stages[-1][1:])
        if s_shape != t_shape or len(s_shape) != 3:
            raise IncompatiblePairError(f"dist_plus: the last stage maps must have one (C, H, W) shape (the original "
                                        f"has no adapter): student {s_shape}, teacher {t_shape}")
        if params.channel_term not in ("corr", "one_minus_corr"):
            raise ConfigError(f"methods.dist_plus.channel_term: corr or one_minus_corr, got {params.channel_term!r}")

    def losses(self, batch, s, t, step):
        p = self.params
        return {"dist_plus": dist_plus_loss(s.logits, t.logits, s.stages[-1], t.stages[-1], p.beta, p.gamma, p.iota,
                                            p.kappa, p.tau, p.channel_term)}
