"""Mixup as a relational KD baseline (CKD's helper/MixupTrainHelpers.py): the student sees the weighted sum of
k training images, sum_i w_i x_i, with one weight vector per batch, w ~ Dirichlet(1, ..., 1) (for k = 2: lambda ~
Beta(1, 1)), and learns the same weighting of their labels and of the teacher's outputs on each image (usually
its cached ones): cls = sum_i w_i CE(z_s, y_i); rel = sum_i w_i CE(z_s, softmax(z_t,i)) (soft targets, T 1);
kd = sum_i w_i KD_T(z_s, z_t,i) (CKD's --loss_fn 1 variant; weight 0 by default). mixup3 is the three-image
version the CKD README and sweeps name but its code lacks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdzoo.data.groups import GroupLayout
from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import GroupedParams
from kdzoo.distillers.kd import kd_loss
from kdzoo.distillers.registry import register_method
from kdzoo.models.features import Needs


def soft_cross_entropy(logits: Tensor, probs: Tensor) -> Tensor:
    """-sum_c p_c log softmax(z)_c, averaged over the batch (torch's CE with probability targets)."""
    return -(probs * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


@dataclass
class MixupParams(GroupedParams):
    pass


@register_method
class Mixup(Method):
    name = "mixup"
    reference = "alextxu/ckd"  # the code its tests compare against
    description = "mixup baseline: the student on a mix of two images learns the mixed labels and teacher outputs"
    paper = "Zhang et al., mixup, 2018; as a KD baseline in Wilf et al., Comparative Knowledge Distillation, 2023"
    terms = ("mixup_cls", "mixup_rel", "mixup_kd")
    student_needs = Needs(logits=True)
    teacher_needs = Needs(logits=True)
    Params = MixupParams
    recipes = Recipes(few_sample=True, loss={"mixup_cls": 1.0, "mixup_rel": 1.0})
    members = 2

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(f"m{i}" for i in range(self.members))

    def group_layout(self) -> GroupLayout:
        return GroupLayout(tuple((part, 1) for part in self.parts), mix="mix", count=self.params.groups)

    def teacher_views(self) -> tuple[str, ...]:
        return self.parts

    def step_losses(self, ctx) -> dict[str, Tensor]:
        b, batch = self.binding, ctx.batch
        s = ctx.features(b.student, "mix").logits.float()
        weights = batch.mix_lambda
        cls = rel = kd = 0.0
        for w, part in zip(weights, self.parts):
            t = ctx.features(b.teacher, part).logits.float()
            if b.detach_teacher:
                t = t.detach()
            cls = cls + w * F.cross_entropy(s, batch.targets_of(part))
            rel = rel + w * soft_cross_entropy(s, F.softmax(t, dim=1))
            kd = kd + w * kd_loss(s, t, self.params.T)
        return {b.term(f"{self.name}_cls"): cls, b.term(f"{self.name}_rel"): rel, b.term(f"{self.name}_kd"): kd}


@register_method
class Mixup3(Mixup):
    name = "mixup3"
    reference = "alextxu/ckd"  # the code its tests compare against
    description = "mixup of three images with Dirichlet(1, 1, 1) weights"
    terms = ("mixup3_cls", "mixup3_rel", "mixup3_kd")
    recipes = Recipes(few_sample=True, loss={"mixup3_cls": 1.0, "mixup3_rel": 1.0})
    members = 3
