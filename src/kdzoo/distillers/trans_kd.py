"""Transformer guidance of a CNN-Transformer student (`<arch>_trans`, DS-SRD): its transformer branch learns the
labels (`trans_ce`) and the CNN branch learns from the branch's softened outputs (`trans_kd` = KD_T(CNN logits,
branch logits), the branch detached, T 4). Beside these the CNN branch trains with the recipe's other terms (ce,
kd from a teacher, crd, ...) and is what deploys."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from kdzoo.distillers.base import Method
from kdzoo.distillers.kd import kd_loss
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError
from kdzoo.models.features import Needs


@dataclass
class TransKDParams:
    T: float = 4.0


@register_method
class TransKD(Method):
    name = "trans_kd"
    reference = "AiXia520/DS-SRD"  # the code its tests compare against
    description = "CNN-Transformer student: CE of its transformer branch and KD from the branch to its CNN"
    paper = "Xu et al., DS-SRD: a unified framework for structured representation distillation, 2023"
    terms = ("trans_ce", "trans_kd")
    task_terms = ("trans_ce",)
    student_needs = Needs(logits=True, heads=True)
    Params = TransKDParams

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        if not hasattr(ctx.student, "deploy_module") or not hasattr(ctx.student, "head_logits"):
            raise ConfigError(f"trans_kd: {getattr(ctx.student, 'kdzoo_arch', 'the student')} has no transformer "
                              "branch; train a _trans model (e.g. resnet8x4_trans)")
        if params.T <= 0:
            raise ConfigError(f"methods.trans_kd.T: must be > 0, got {params.T}")

    def losses(self, batch, s, t, step):
        branch = s.heads[0]
        return {"trans_ce": F.cross_entropy(branch.float(), batch.targets),
                "trans_kd": kd_loss(s.logits, branch.detach(), self.params.T)}
