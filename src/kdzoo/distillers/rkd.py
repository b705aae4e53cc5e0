"""Relational KD: distance-wise and angle-wise relations among the pooled features of a batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import pairwise_distances
from kdzoo.distillers.registry import register_method
from kdzoo.models.features import Needs


def _normalised_distances(e: Tensor) -> Tensor:
    """Euclidean distance matrix divided by the mean of its positive entries (no host sync)."""
    d = pairwise_distances(e)
    positive = (d > 0).to(d.dtype)
    return d / ((d * positive).sum() / positive.sum().clamp(min=1.0))


def _angles(e: Tensor) -> Tensor:
    """cos of the angle at i between j and k: <n_ij, n_ik>, n_ij = normalise(e_j - e_i); flattened (B^3,)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [i, j] = normalise(e_j - e_i)
    return (diff @ diff.transpose(1, 2)).flatten()


def rkd_distance_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """SmoothL1 between the mean-normalised distance matrices (float32: in bf16 the Gram-based distances of
    nearby points cancel to noise)."""
    with torch.autocast(e_s.device.type, enabled=False):
        e_s, e_t = e_s.float().flatten(1), e_t.float().flatten(1)
        return F.smooth_l1_loss(_normalised_distances(e_s), _normalised_distances(e_t))


def rkd_angle_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """SmoothL1 between the angle triplets, in float32."""
    with torch.autocast(e_s.device.type, enabled=False):
        e_s, e_t = e_s.float().flatten(1), e_t.float().flatten(1)
        return F.smooth_l1_loss(_angles(e_s), _angles(e_t))


def rkd_loss(e_s: Tensor, e_t: Tensor, w_d: float = 25.0, w_a: float = 50.0) -> Tensor:
    """RKD = w_d * distance loss + w_a * angle loss: Huber losses between the normalised pairwise distances and
    between the triplet angle cosines of student and teacher embeddings (RepDistiller RKDLoss)."""
    if e_s.shape[0] < 2:  # no pairs in a batch of one
        return e_s.float().sum() * 0.0
    return w_d * rkd_distance_loss(e_s, e_t) + w_a * rkd_angle_loss(e_s, e_t)


@dataclass
class RKDParams:
    w_d: float = 25.0  # weight of the distance-wise term
    w_a: float = 50.0  # weight of the angle-wise term


@register_method
class RKD(Method):
    name = "rkd"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "relational KD: distance and angle relations among the pooled features of a batch"
    paper = "Park et al., Relational Knowledge Distillation, CVPR 2019"
    student_needs = Needs(pooled=True)
    teacher_needs = Needs(pooled=True)
    Params = RKDParams
    recipes = Recipes(loss={"ce": 1.0, "rkd": 1.0})

    def losses(self, batch, s, t, step):
        return {"rkd": rkd_loss(s.pooled, t.pooled, self.params.w_d, self.params.w_a)}
