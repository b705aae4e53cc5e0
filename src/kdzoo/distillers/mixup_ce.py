"""Mixup cross-entropy (Zhang et al.): the bound network sees lam x + (1 - lam) x[partner], one lam ~ Beta(1, 1)
per batch, and learns lam CE(z, y) + (1 - lam) CE(z, y[partner]). No teacher: DS-SRD's strong student trains with
it (`strong.mixup_ce` in the double_student regime); it also regularises any student alone."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdzoo.data.input_mixing import mixup
from kdzoo.distillers.base import Method
from kdzoo.distillers.registry import register_method
from kdzoo.models.features import Needs


@register_method
class MixupCE(Method):
    name = "mixup_ce"
    task_terms = ("mixup_ce",)
    reference = "AiXia520/DS-SRD"  # the code its tests compare against
    description = "mixup cross-entropy of one network (no teacher): DS-SRD's strong student"
    paper = "Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR 2018"
    student_needs = Needs(logits=True)

    def step_losses(self, ctx) -> dict[str, Tensor]:
        b = self.binding
        mixed = mixup(ctx.batch.view(b.view))
        logits = ctx.features(b.student, ctx.add_view(f"{b.term(self.name)}.x", mixed.inputs)).logits.float()
        y = ctx.batch.targets_of(b.view)
        lam = mixed.lam[0]
        loss = lam * F.cross_entropy(logits, y[mixed.source]) + (1 - lam) * F.cross_entropy(logits, y[mixed.partner])
        return {b.term(self.name): loss}
