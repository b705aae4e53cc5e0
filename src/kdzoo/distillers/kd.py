"""Hinton et al. knowledge distillation: KL between temperature-softened teacher and student outputs.

`standardize: true` is logit standardization (LS; Sun et al., Logit Standardization in Knowledge Distillation,
CVPR 2024; sunshangquan/logit-standardization-KD): both networks' logits are z-scored per sample before the
softmax, z' = (z - mean(z)) / (1e-7 + std(z)) with the unbiased std, so the student matches the shape of the
teacher's logits rather than their scale. Its code's `--logit-stand --base-temp 2 --kd-weight 9` is the `kd_ls`
recipe row (T 2, weight 9, CE 0.1)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.registry import register_method
from kdzoo.models.features import Needs


def standardize_logits(logits: Tensor) -> Tensor:
    """(z - mean(z)) / (1e-7 + std(z)) per row, std unbiased (sunshangquan/logit-standardization-KD normalize())."""
    return (logits - logits.mean(dim=-1, keepdim=True)) / (1e-7 + logits.std(dim=-1, keepdim=True))


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), summed over classes, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


@dataclass
class KDParams:
    T: float = 4.0
    standardize: bool = False  # logit standardization (LS, CVPR 2024) of both networks' logits


@register_method
class KD(Method):
    name = "kd"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "Hinton KD: temperature-softened teacher outputs as soft targets"
    paper = "Hinton et al., Distilling the Knowledge in a Neural Network, 2015"
    student_needs = Needs(logits=True)
    teacher_needs = Needs(logits=True)
    Params = KDParams
    recipes = Recipes(loss={"ce": 0.1, "kd": 0.9}, variants={"kd_ls": {"ce": 0.1, "kd": 9.0}},
                      variant_params={"kd_ls": {"T": 2.0, "standardize": True}})

    def losses(self, batch, s, t, step):
        z_s, z_t = s.logits, t.logits
        if self.params.standardize:
            z_s, z_t = standardize_logits(z_s.float()), standardize_logits(z_t.float())
        return {"kd": kd_loss(z_s, z_t, self.params.T)}
