"""TTM and WTTM: knowledge distillation by transformed teacher matching (Zheng & Yang, ICLR 2024).

The teacher's probabilities go through a power transform with exponent gamma (`l`, the code's --ttm_l) and are
renormalised; the student is matched at temperature 1:

    p_t^gamma = softmax(z_t)^gamma / sum_j softmax(z_t)_j^gamma
    L_TTM  = mean_i KL(p_t^gamma_i || softmax(z_s)_i)
    L_WTTM = mean_i U_i * KL(p_t^gamma_i || softmax(z_s)_i),   U_i = sum_j softmax(z_t)_ij^gamma

(a power transform with gamma = 1/T equals temperature scaling of the teacher alone; the weight U_i, the power sum,
is larger for less confident teachers). Follows zkxufo/TTM distiller_zoo/ttm.py and wttm.py: the KL summed over
classes and averaged over the batch, no T^2 factor, recipe `-r 1 -b BETA` as `loss: {ce: 1, ttm: BETA}`.
kdzoo computes in float32 with the power as exp(gamma * log_softmax) (the same value, no underflow to 0^gamma).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.registry import register_method
from kdzoo.models.features import Needs


def transformed_teacher(teacher_logits: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """(p_t^gamma renormalised, the power sum U = sum_j p_tj^gamma) per row, float32."""
    powered = torch.exp(gamma * F.log_softmax(teacher_logits.float(), dim=1))
    norm = powered.sum(dim=1)
    return powered / norm.unsqueeze(1), norm


def ttm_loss(student_logits: Tensor, teacher_logits: Tensor, gamma: float, weighted: bool = False) -> Tensor:
    """L_TTM = mean_i KL(p_t^gamma_i || softmax(z_s)_i); weighted (WTTM): each row's KL times U_i = sum_j
    p_tj^gamma (zkxufo/TTM distiller_zoo/ttm.py, wttm.py)."""
    target, norm = transformed_teacher(teacher_logits, gamma)
    log_p_s = F.log_softmax(student_logits.float(), dim=1)
    kl = F.kl_div(log_p_s, target, reduction="none").sum(dim=1)
    return (norm * kl).mean() if weighted else kl.mean()


@dataclass
class TTMParams:
    l: float = field(default=0.1, metadata={"gt": 0, "hint": "the power transform's exponent gamma (--ttm_l)"})  # noqa: E741


@dataclass
class WTTMParams:
    l: float = field(default=0.2, metadata={"gt": 0, "hint": "the power transform's exponent gamma (--ttm_l)"})  # noqa: E741


@register_method
class TTM(Method):
    name = "ttm"
    reference = "zkxufo/TTM"  # the code its tests compare against
    description = "transformed teacher matching: a power-transformed teacher matched by the student at T = 1"
    paper = "Zheng & Yang, Knowledge Distillation Based on Transformed Teacher Matching, ICLR 2024"
    student_needs = Needs(logits=True)
    teacher_needs = Needs(logits=True)
    Params = TTMParams
    # the README's command (vgg13 -> vgg8): --ttm_l 0.1 -r 1 -b 45
    recipes = Recipes(loss={"ce": 1.0, "ttm": 45.0})
    weighted = False

    def losses(self, batch, s, t, step):
        return {self.name: ttm_loss(s.logits, t.logits, self.params.l, weighted=self.weighted)}


@register_method
class WTTM(TTM):
    name = "wttm"
    description = "weighted TTM: each sample's TTM term weighted by the power sum of its teacher probabilities"
    Params = WTTMParams
    # the README's WTTM weight and exponent (its WTTM + CRD command: --add wttm --ttm_l 0.2 -a 4); the paper's
    # per-pair values are in its appendix, not in the code
    recipes = Recipes(loss={"ce": 1.0, "wttm": 4.0})
    weighted = True
