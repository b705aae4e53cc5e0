"""USKD: universal self-knowledge distillation, NKD's teacher-free form (Yang et al., ICCV 2023; yzd-v/cls_KD).

No teacher: the student's own outputs make its soft labels, and a linear "weak" classifier on an intermediate
feature gives a second opinion for ranking the classes (s = softmax(z), w = softmax(weak(f)), y the label):

    L_target = -mean_i p_i log s_{i,y},   p_i = s_{i,y}^2 + 1 - mean_batch(s_{.,y}^2)       (detached)
    L_weak   = -mu mean_i sum_j q_{ij} log w_{ij},   q = 0.9 one_hot(y) + 0.1 / C         (label smoothing 0.1)
    rank_i   = w_i / (1 - w_{i,y} + 1e-6) + log s_i / (1 - log s_{i,y} + 1e-6)       (sorted, no gradient)
    L_non    = -mean_i sum_{j != y} Z_{ij} log softmax(z_i without y)_j,   Z = 1 / rank position (Zipf), the
               target's position included, renormalised over the C-1 non-target classes      (detached)
    L_USKD   = alpha L_target + beta L_non + L_weak

Follows mmcls/models/dis_losses/uskd.py (USKDLoss) with the feature mmcls/models/classifiers/distiller.py feeds it
for CNNs: `neck(fea_s[-2])`, the global average pool of the second-to-last backbone stage (ResNet-18/50: layer3,
256/1024 channels). kdzoo reads the same stage map (`stages[-2]`: the last stage map is `stages[-1]`), pools it and
owns the linear layer (`weak_head`, C_mid -> classes, nn.Linear's default init as the original). The weak loss's
gradient reaches the backbone through that feature, as in the original; the weak head is not deployed.

The code ranks with the student's log-probabilities (`s_i` is rebound to the log-softmax before the rank), not
its probabilities as the names and the `1 - s_t` suggest; kdzoo follows the code (`rank_log_probs: false` ranks
with the probabilities). Defaults are the class's and every ImageNet config's (alpha 1, beta 0.1, mu 0.005); the
CIFAR-100 config (ResNet-18) sets alpha 0.1, beta 0.1, mu 0.1 (the CIFAR recipe's `methods:` section). Class
scores (mixup/cutmix labels, [N, C]) take the original's branch: the two highest classes with their scores.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import non_target_classes
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.features import Needs

CIFAR100_PARAMS = {"alpha": 0.1, "beta": 0.1, "mu": 0.1}  # configs/distillers/cifar100/res18_sd_cifar.py


def uskd_loss(logits: Tensor, weak_logits: Tensor, target: Tensor, alpha: float, beta: float, mu: float,
              rank_log_probs: bool = True) -> Tensor:
    """L_USKD of the module docstring (yzd-v/cls_KD mmcls/models/dis_losses/uskd.py USKDLoss.forward): `logits`
    the student's [N, C], `weak_logits` the weak head's [N, C], `target` labels [N] or class scores [N, C]."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z, w = logits.to(dtype), weak_logits.to(dtype)
    n, c = z.shape
    if target.dim() > 1:  # class scores: the two highest classes and their scores
        scores = target.to(dtype)
        value, label = scores.sort(dim=1, descending=True)
        value, label = value[:, :2], label[:, :2]
        smoothed = scores * 0.9 + 0.1 / c
    else:
        label = target.view(n, 1)
        value = torch.ones(n, 1, dtype=dtype, device=z.device)
        smoothed = torch.zeros_like(z).scatter_(1, label, 0.9) + 0.1 / c

    # target part: the student's target probability squared, shifted so that its batch mean is the label's
    p = F.softmax(z, dim=1).gather(1, label).detach() ** 2
    p = (p + value - p.mean(0, keepdim=True)).masked_fill(value == 0, 0.0)
    log_s = F.log_softmax(z, dim=1)
    loss_target = -(p * log_s.gather(1, label)).sum(dim=1).mean()

    # weak supervision: label-smoothed cross-entropy of the weak head, weighted by mu
    log_w = F.log_softmax(w, dim=1)
    loss_weak = -(mu * smoothed * log_w).sum(dim=1).mean()

    # non-target part: Zipf's weights from the classes' rank by weak and final outputs
    with torch.no_grad():
        prob_w = log_w.exp()
        s_rank = log_s if rank_log_probs else log_s.exp()
        score = prob_w / (1 - prob_w.gather(1, label).sum(1, keepdim=True) + 1e-6) \
            + s_rank / (1 - s_rank.gather(1, label).sum(1, keepdim=True) + 1e-6)
        position = score.argsort(dim=1, descending=True).argsort(dim=1)  # 0 for the highest-ranked class
        others = non_target_classes(label, z.shape[1])
        zipf = (1.0 / (position + 1).to(dtype)).gather(1, others)
        zipf = zipf / zipf.sum(dim=1, keepdim=True)
    log_non = F.log_softmax(z.gather(1, others), dim=1)
    loss_non = -(zipf * log_non).sum(dim=1).mean()
    return alpha * loss_target + beta * loss_non + loss_weak


@dataclass
class USKDParams:
    alpha: float = field(default=1.0, metadata={"ge": 0})
    beta: float = field(default=0.1, metadata={"ge": 0})
    mu: float = field(default=0.005, metadata={"ge": 0})
    stage: int = -2  # the stage map the weak head reads, pooled (the original's fea_s[-2])
    rank_log_probs: bool = True  # the code's rank; false: probabilities


@register_method
class USKD(Method):
    name = "uskd"
    reference = "yzd-v/cls_KD"  # the code its tests compare against
    description = "teacher-free NKD: the student's own target probability and Zipf's non-target labels ranked " \
                  "by its logits and a weak head on a middle stage"
    paper = "Yang et al., From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with " \
            "Normalized Loss and Customized Soft Labels, ICCV 2023"
    student_needs = Needs(logits=True, stages=True)
    teacher_needs = Needs()
    Params = USKDParams
    # the classifier loss + USKD (its weights inside: alpha, beta, mu); the CIFAR-100 config's parameters
    recipes = Recipes(loss={"ce": 1.0, "uskd": 1.0}, variant_params={"uskd": CIFAR100_PARAMS})

    def __init__(self, params: USKDParams, ctx):
        super().__init__(params, ctx)
        stages = ctx.student_shapes.stages
        if not stages or not -len(stages) <= params.stage < len(stages):
            raise IncompatiblePairError(f"uskd: stage {params.stage} out of range: the student has "
                                        f"{len(stages or [])} stage maps")
        shape = stages[params.stage]
        if len(shape) != 4:
            raise IncompatiblePairError(f"uskd: stage {params.stage} is not a (B, C, H, W) map: {tuple(shape)}")
        self.weak_head = nn.Linear(int(shape[1]), int(ctx.student_shapes.logits[-1]))

    def losses(self, batch, s, t, step):
        p = self.params
        weak = self.weak_head(s.stages[p.stage].mean(dim=(2, 3)))  # the original's GlobalAveragePooling neck
        return {"uskd": uskd_loss(s.logits, weak, batch.targets, p.alpha, p.beta, p.mu, p.rank_log_probs)}
