"""DKD: decoupled knowledge distillation (Zhao et al., CVPR 2022; megvii-research/mdistiller DKD.py).

The KD loss splits into a target-class part (TCKD: KL between the binary distributions [p_gt, 1 - p_gt] of teacher
and student) and a non-target part (NCKD: KL between the distributions over the non-target classes, obtained by
pushing the target logit down by 1000 before the softmax), both at temperature T and scaled by T^2, summed over the
batch and divided by its size. The term ramps up linearly over the first `warmup` epochs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import warmup_factor
from kdzoo.distillers.kd import standardize_logits
from kdzoo.distillers.registry import register_method
from kdzoo.models.features import Needs

# mdistiller configs/cifar100/dkd/*.yaml: DKD.BETA per pair (the other pairs keep the default 8). Every one of those
# configs uses batch 64, 240 epochs, lr 0.05 (0.01 for ShuffleV1/V2 and MobileNetV2 students), x0.1 at
# 150/180/210, weight decay 5e-4, momentum 0.9: the recipe generator's defaults, so only beta changes per pair.
PAIR_BETA = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "MobileNetV2"): 6.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
}


def dkd_parts(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each T^2 * (sum of the KL over the batch) / B, computed in float32."""
    z_s = student_logits.float() / T
    z_t = teacher_logits.float() / T
    batch = z_s.shape[0]
    gt_mask = torch.zeros_like(z_s, dtype=torch.bool).scatter_(1, target.reshape(-1, 1), True)
    other_mask = ~gt_mask

    # TCKD over the binary distribution [p_gt, p_other] (mdistiller's cat_mask). The teacher side sums
    # probabilities as the original does; the student side is the same log(cat_mask(softmax)) taken in log space
    # (logsumexp over the masked log-probabilities), which cannot reach log(0).
    p_t = F.softmax(z_t, dim=1)
    bin_t = torch.stack([(p_t * gt_mask).sum(1), (p_t * other_mask).sum(1)], dim=1)
    log_p_s = F.log_softmax(z_s, dim=1)
    log_bin_s = torch.stack([log_p_s.masked_fill(other_mask, float("-inf")).logsumexp(1),
                             log_p_s.masked_fill(gt_mask, float("-inf")).logsumexp(1)], dim=1)
    tckd = F.kl_div(log_bin_s, bin_t, reduction="sum") * (T**2) / batch

    # NCKD: the -1000 * gt_mask trick removes the target class from both softmaxes.
    shift = 1000.0 * gt_mask
    p_t_other = F.softmax(z_t - shift, dim=1)
    log_p_s_other = F.log_softmax(z_s - shift, dim=1)
    nckd = F.kl_div(log_p_s_other, p_t_other, reduction="sum") * (T**2) / batch
    return tckd, nckd


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, alpha: float, beta: float,
             T: float) -> Tensor:
    """DKD = alpha * TCKD + beta * NCKD at temperature T: the binary target/non-target KL and the KL among the
    non-target classes, each times T^2 (megvii-research/mdistiller mdistiller/distillers/DKD.py)."""
    tckd, nckd = dkd_parts(student_logits, teacher_logits, target, T)
    return alpha * tckd + beta * nckd


@dataclass
class DKDParams:
    alpha: float = 1.0  # TCKD weight
    beta: float = 8.0  # NCKD weight (per-pair values in the CIFAR-100 recipes)
    T: float = 4.0  # temperature
    warmup: float = 20.0  # epochs of linear ramp: min((epoch + 1) / warmup, 1)
    standardize: bool = False  # logit standardization (LS, CVPR 2024): z-scored logits, as in kd.py


@register_method
class DKD(Method):
    name = "dkd"
    reference = "megvii-research/mdistiller"  # the code its tests compare against
    description = "decoupled KD: target-class (TCKD) and non-target-class (NCKD) KL terms weighted separately"
    paper = "Zhao et al., Decoupled Knowledge Distillation, CVPR 2022"
    student_needs = Needs(logits=True)
    teacher_needs = Needs(logits=True)
    Params = DKDParams
    # dkd_ls: logit standardization's `--logit-stand --base-temp 2 --kd-weight 9` (alpha and beta times 9, T 2)
    recipes = Recipes(loss={"ce": 1.0, "dkd": 1.0}, variants={"dkd_ls": {"ce": 1.0, "dkd": 1.0}},
                      variant_params={"dkd_ls": {"alpha": 9.0, "beta": 72.0, "T": 2.0, "standardize": True}})

    @classmethod
    def pair_overrides(cls, teacher: str, student: str) -> dict:
        beta = PAIR_BETA.get((teacher, student))
        return {"methods": {"dkd": {"beta": beta}}} if beta is not None else {}

    def losses(self, batch, s, t, step):
        p = self.params
        z_s, z_t = s.logits, t.logits
        if p.standardize:
            z_s, z_t = standardize_logits(z_s.float()), standardize_logits(z_t.float())
        loss = dkd_loss(z_s, z_t, batch.targets, p.alpha, p.beta, p.T)
        return {"dkd": warmup_factor(step.epoch, p.warmup) * loss}
