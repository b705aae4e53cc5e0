"""NKD: normalized knowledge distillation (Yang et al., ICCV 2023; yzd-v/cls_KD).

The teacher's probabilities are split into the target class and the non-target classes; the non-target part is
renormalised (a softmax over the other C-1 classes), so its scale no longer depends on the target's confidence:

    L_target = -mean_i t_{i,y} log s_{i,y}                         (softmax at T = 1)
    L_non    = -gamma T^2 mean_i sum_{j != y} T~_{ij} log S~_{ij}   (softmaxes over the C-1 non-target logits at T)
    L_NKD    = L_target + L_non

Follows mmcls/models/dis_losses/nkd.py (NKDLoss): temp 1.0 and gamma 1.5 in its ImageNet config, added to the
classification loss with weight 1 (recipe {ce: 1, nkd: 1}). The non-target term is a cross-entropy, not a KL (its
value includes the teacher's entropy; the gradient is the same). Computed in float32.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import non_target_classes
from kdzoo.distillers.registry import register_method
from kdzoo.models.features import Needs


def nkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float,
             gamma: float) -> Tensor:
    """L_NKD = -mean t_y log s_y - gamma T^2 mean sum_{j != y} softmax(z_t~/T)_j log softmax(z_s~/T)_j, where z~ are
    the logits without the target class (yzd-v/cls_KD mmcls/models/dis_losses/nkd.py)."""
    z_s, z_t = student_logits.float(), teacher_logits.float()
    n, c = z_s.shape
    label = target.view(n, 1)
    s_target = F.log_softmax(z_s, dim=1).gather(1, label)
    t_target = F.softmax(z_t, dim=1).gather(1, label).detach()
    loss_target = -(t_target * s_target).mean()
    others = non_target_classes(label, c)
    non_s = F.log_softmax(z_s.gather(1, others) / temperature, dim=1)
    non_t = F.softmax(z_t.gather(1, others) / temperature, dim=1)
    loss_non = -gamma * temperature**2 * (non_t * non_s).sum(dim=1).mean()
    return loss_target + loss_non


@dataclass
class NKDParams:
    T: float = field(default=1.0, metadata={"gt": 0})
    gamma: float = field(default=1.5, metadata={"ge": 0})


@register_method
class NKD(Method):
    name = "nkd"
    reference = "yzd-v/cls_KD"  # the code its tests compare against
    description = "normalized KD: target-class and renormalised non-target-class terms of the teacher's output"
    paper = "Yang et al., From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with " \
            "Normalized Loss and Customized Soft Labels, ICCV 2023"
    student_needs = Needs(logits=True)
    teacher_needs = Needs(logits=True)
    Params = NKDParams
    recipes = Recipes(loss={"ce": 1.0, "nkd": 1.0})  # its ImageNet config: the classifier loss + NKD, weight 1

    def losses(self, batch, s, t, step):
        return {"nkd": nkd_loss(s.logits, t.logits, batch.targets, self.params.T, self.params.gamma)}
