"""DIST: distillation from a stronger teacher by matching relations, not values (Huang et al., NeurIPS 2022).

With y = softmax(z / tau): the inter-class term is 1 - mean over samples of the Pearson correlation between the
student's and the teacher's class distributions of that sample (rows); the intra-class term is the same over classes
(columns: each class's probabilities across the batch). Loss = tau^2 * (beta * inter + gamma * intra), as in the
CIFAR version of the loss (alextxu/ckd distiller_zoo/DIST.py, adapted from hunto/image_classification_sota).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.registry import register_method
from kdzoo.models.features import Needs


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of a with the same row of b: cosine of the mean-centred rows, with the
    original's eps added to the product of the norms (so constant rows give 0, not NaN)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_parts(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """(inter, intra) relation losses in float32, before the tau^2 scaling."""
    y_s = F.softmax(student_logits.float() / tau, dim=1)
    y_t = F.softmax(teacher_logits.float() / tau, dim=1)
    inter = 1.0 - pearson_rows(y_s, y_t).mean()
    intra = 1.0 - pearson_rows(y_s.t(), y_t.t()).mean()
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
