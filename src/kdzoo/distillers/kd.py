"""Hinton et al. knowledge distillation: KL between temperature-softened teacher and student outputs."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.registry import register_method
from kdzoo.models.features import Needs


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), summed over classes, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


@dataclass
class KDParams:
    T: float = 4.0


@register_method
class KD(Method):
    name = "kd"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "Hinton KD: temperature-softened teacher outputs as soft targets"
    paper = "Hinton et al., Distilling the Knowledge in a Neural Network, 2015"
    student_needs = Needs(logits=True)
    teacher_needs = Needs(logits=True)
    Params = KDParams
    recipes = Recipes(loss={"ce": 0.1, "kd": 0.9})

    def losses(self, batch, s, t, step):
        return {"kd": kd_loss(s.logits, t.logits, self.params.T)}
