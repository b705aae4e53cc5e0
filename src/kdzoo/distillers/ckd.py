"""CKD, comparative knowledge distillation (Wilf et al., alextxu/ckd): the student learns how the teacher's
outputs *differ* between groups of images. Each training sample is a group of P positives and N negatives
(`pos_and_neg` n: P = n - n//2, N = n//2), which go through the student in two separate forwards (BatchNorm sees
them apart). Per group, s = mix(mean z_s(pos), mean z_s(neg)), t = the same on the teacher's logits (usually its
cached outputs), l = the same on one-hot labels, and the loss is w_cls MSE(s, l) + w_rel MSE(s, t) (+ w_kd KD_T(s,
t), weight 0 by default), both MSEs averaged over B x C; there is no plain CE term. mix is the difference (ckd),
the mean (ckd_add) or lam x + (1 - lam) y with one lam ~ Beta(1, 1) per batch (ckd_mixup). ckd_inter adds the
same comparison (difference) of intermediate features through a white-box method: hint (fitnet), vid or cc.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.data.groups import GroupLayout
from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import GroupedParams
from kdzoo.distillers.kd import kd_loss
from kdzoo.distillers.registry import METHODS, register_method
from kdzoo.models.features import Features, Needs


def group_sizes(pos_and_neg: int) -> tuple[int, int]:
    """(P, N): CKD's `pos_and_neg` 2 -> 1/1, 3 -> 2/1."""
    return pos_and_neg - pos_and_neg // 2, pos_and_neg // 2


def group_mean(t: Tensor, members: int) -> Tensor:
    """[B * members, ...] rows, group-major -> [B, ...] means over each group's members."""
    return t.reshape(-1, members, *t.shape[1:]).mean(dim=1)


def contrast_features(pos: Features, neg: Features, p: int, n: int, mix) -> Features:
    """Every feature the two forwards gave, group-averaged per side and mixed."""
    out = {}
    for f in fields(Features):
        a, b = getattr(pos, f.name), getattr(neg, f.name)
        if a is None or b is None:
            out[f.name] = None
        elif isinstance(a, list):
            out[f.name] = [mix(group_mean(x.float(), p), group_mean(y.float(), n)) for x, y in zip(a, b)]
        else:
            out[f.name] = mix(group_mean(a.float(), p), group_mean(b.float(), n))
    return Features(**out)


@dataclass
class CKDParams(GroupedParams):
    pos_and_neg: int = field(default=2, metadata={"ge": 2})


@register_method
class CKD(Method):
    name = "ckd"
    reference = "alextxu/ckd"  # the code its tests compare against
    description = "comparative KD: MSE between student and teacher differences of positive/negative groups"
    paper = "Wilf et al., Comparative Knowledge Distillation, 2023"
    terms = ("ckd_cls", "ckd_rel", "ckd_kd")
    student_needs = Needs(logits=True)
    teacher_needs = Needs(logits=True)
    Params = CKDParams
    recipes = Recipes(few_sample=True, loss={"ckd_cls": 1.0, "ckd_rel": 1.0})

    def group_layout(self) -> GroupLayout:
        p, n = group_sizes(self.params.pos_and_neg)
        return GroupLayout((("pos", p), ("neg", n)), count=self.params.groups)

    def mix(self, x: Tensor, y: Tensor, lam: Tensor) -> Tensor:
        return x - y

    def draw_lambda(self, device) -> Tensor:
        return torch.ones((), device=device)

    def teacher_views(self) -> tuple[str, ...]:
        return ("pos", "neg")

    def sides(self, ctx, network: str, teacher: bool) -> tuple[Features, Features]:
        pos, neg = ctx.features(network, "pos"), ctx.features(network, "neg")
        if teacher and self.binding.detach_teacher:
            pos, neg = pos.map(Tensor.detach), neg.map(Tensor.detach)
        return pos, neg

    def step_losses(self, ctx) -> dict[str, Tensor]:
        b, batch = self.binding, ctx.batch
        lam = self.draw_lambda(batch.inputs.device)
        mix = lambda x, y: self.mix(x, y, lam)  # noqa: E731
        p, n = group_sizes(self.params.pos_and_neg)
        s = contrast_features(*self.sides(ctx, b.student, False), p, n, mix)
        t = contrast_features(*self.sides(ctx, b.teacher, True), p, n, mix)
        classes = s.logits.shape[1]
        one_hot = {v: F.one_hot(batch.targets_of(v), classes).float() for v in ("pos", "neg")}
        labels = mix(group_mean(one_hot["pos"], p), group_mean(one_hot["neg"], n))
        terms = self.comparison(s, t, labels)
        terms.update(self.extra_terms(batch, s, t, ctx.info))
        return {b.term(k): v for k, v in terms.items()}

    def comparison(self, s: Features, t: Features, labels: Tensor) -> dict[str, Tensor]:
        return {f"{self.name}_cls": F.mse_loss(s.logits, labels), f"{self.name}_rel": F.mse_loss(s.logits, t.logits),
                f"{self.name}_kd": kd_loss(s.logits, t.logits, self.params.T)}

    def extra_terms(self, batch, s: Features, t: Features, info) -> dict[str, Tensor]:
        return {}


@register_method
class CKDAdd(CKD):
    name = "ckd_add"
    reference = "alextxu/ckd"  # the code its tests compare against
    description = "CKD with the two sides mixed by their mean instead of their difference"
    terms = ("ckd_add_cls", "ckd_add_rel", "ckd_add_kd")
    recipes = Recipes(few_sample=True, loss={"ckd_add_cls": 1.0, "ckd_add_rel": 1.0})

    def mix(self, x, y, lam):
        return 0.5 * x + 0.5 * y


@register_method
class CKDMixup(CKD):
    name = "ckd_mixup"
    reference = "alextxu/ckd"  # the code its tests compare against
    description = "CKD with the two sides mixed by mixup weights (one lambda ~ Beta(1, 1) per batch)"
    terms = ("ckd_mixup_cls", "ckd_mixup_rel", "ckd_mixup_kd")
    recipes = Recipes(few_sample=True, loss={"ckd_mixup_cls": 1.0, "ckd_mixup_rel": 1.0})

    def mix(self, x, y, lam):
        return lam * x + (1 - lam) * y

    def draw_lambda(self, device) -> Tensor:
        return torch.rand((), device=device)  # Beta(1, 1) is uniform on [0, 1]


INNER = {"hint": "fitnet", "vid": "vid", "cc": "cc"}  # CKD's white-box names -> kdzoo's methods


@dataclass
class CKDInterParams(CKDParams):
    inner: Literal["hint", "vid", "cc"] = "hint"


@register_method
class CKDInter(CKD):
    name = "ckd_inter"
    reference = "alextxu/ckd"  # the code its tests compare against
    description = "CKD plus the comparison of intermediate features through hint (FitNet), VID or CC"
    terms = ("ckd_inter_cls", "ckd_inter_rel", "ckd_inter_kd", "ckd_inter_feat")
    student_needs = Needs(logits=True, stages=True, pooled=True)
    teacher_needs = Needs(logits=True, stages=True, pooled=True)
    Params = CKDInterParams
    recipes = Recipes(few_sample=True, loss={"ckd_inter_cls": 1.0, "ckd_inter_rel": 1.0, "ckd_inter_feat": 100.0})
    # ckd_inter_feat 100: CKD's w_inter for hint
    WEIGHT = {"hint": 100.0, "vid": 1.0, "cc": 0.02}  # CKD's w_inter defaults per inner method

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        inner_cls = METHODS.get(INNER[params.inner])
        self.inner = inner_cls(inner_cls.Params(), ctx)
        self.student_needs = Needs(logits=True) | inner_cls.student_needs
        self.teacher_needs = Needs(logits=True) | inner_cls.teacher_needs

    def extra_terms(self, batch, s, t, info) -> dict[str, Tensor]:
        return {"ckd_inter_feat": sum(self.inner.losses(batch, s, t, info).values())}
