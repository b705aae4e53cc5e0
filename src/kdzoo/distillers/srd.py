"""SRD: simple recipe distillation (Miles & Mikolajczyk, Understanding the Role of the Projector in Knowledge
Distillation, AAAI 2024).

The student's pooled feature goes through a linear projector to the teacher's width; both sides are batch-normalised
without affine parameters (BatchNorm1d, eps 1e-4, batch statistics while training); with those h_s, h_t:

    L_srd = 2 log(sum_{n, d} |h_s - h_t|^p) + KL(softmax(z_t / T) || softmax(z_s / T))   (KL averaged over the batch)

Follows torchdistill (yoshitomo-matsubara/torchdistill: losses/mid_level.py SRDLoss, models/wrapper.py
SRDModelWrapper; configs/official/ilsvrc2012/roymiles/aaai2024): p 4 (`exponent`), T 1, the factor 2 on the
feature term fixed in the code, no T^2 on the KL, the projector an nn.Linear with bias, and the whole loss added
to CE with weight 1. The pooled feature is the mean of the last stage map (torchdistill: layer4's output averaged
over H and W). The teacher's normaliser is fresh and never put in eval mode there either, so it also normalises with
the batch's statistics; it has no parameters and gets no gradient. Equal to roymiles/Simple-Recipe-Distillation's
imagenet/torchdistill OurDistillationLoss (its `log_bn_corr_4` recipe).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.features import Needs

FEATURE_WEIGHT = 2.0  # SRDLoss: `loss = 2 * feat_distill_loss + kl_loss`
NORM_EPS = 1e-4  # the configs' norm_kwargs: eps 0.0001, affine False


def srd_loss(student_normed: Tensor, teacher_normed: Tensor, student_logits: Tensor, teacher_logits: Tensor,
             exponent: float = 4.0, temperature: float = 1.0) -> Tensor:
    """2 log(sum |h_s - h_t|^exponent) + KL(softmax(z_t/T) || softmax(z_s/T)) summed over classes, averaged over the
    batch, without T^2 (torchdistill SRDLoss.forward). Computed in at least float32."""
    dtype = torch.promote_types(student_normed.dtype, torch.float32)
    diff = (student_normed.to(dtype) - teacher_normed.to(dtype)).abs()
    feature = torch.log(diff.pow(exponent).sum())
    log_p_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return FEATURE_WEIGHT * feature + kl


@dataclass
class SRDParams:
    exponent: float = field(default=4.0, metadata={"gt": 0, "hint": "p of sum |h_s - h_t|^p"})
    T: float = field(default=1.0, metadata={"gt": 0})


@register_method
class SRD(Method):
    name = "srd"
    reference = "yoshitomo-matsubara/torchdistill"  # the code its tests compare against
    description = "SRD: linear projector + affine-free batch norm on pooled features, log of the summed p-th power " \
                  "distance, plus KL"
    paper = "Miles & Mikolajczyk, Understanding the Role of the Projector in Knowledge Distillation, AAAI 2024"
    student_needs = Needs(pooled=True, logits=True)
    teacher_needs = Needs(pooled=True, logits=True)
    Params = SRDParams
    # torchdistill's SRD config (ImageNet): CE 1 + SRDLoss 1; no CIFAR-100 config is published in code
    recipes = Recipes(loss={"ce": 1.0, "srd": 1.0})

    def __init__(self, params: SRDParams, ctx):
        super().__init__(params, ctx)
        if ctx.teacher_shapes is None or ctx.teacher_shapes.pooled is None:
            raise IncompatiblePairError("srd: needs a teacher with a pooled feature")
        s_dim, t_dim = int(ctx.student_shapes.pooled[1]), int(ctx.teacher_shapes.pooled[1])
        self.projector = nn.Linear(s_dim, t_dim)
        self.student_norm = nn.BatchNorm1d(t_dim, eps=NORM_EPS, affine=False)
        self.teacher_norm = nn.BatchNorm1d(t_dim, eps=NORM_EPS, affine=False)

    def losses(self, batch, s, t, step):
        h_s = self.student_norm(self.projector(s.pooled))
        with torch.no_grad():  # the teacher's side: torchdistill runs it under no_grad (running stats still move)
            h_t = self.teacher_norm(t.pooled)
        return {"srd": srd_loss(h_s, h_t, s.logits, t.logits.detach(), self.params.exponent, self.params.T)}
