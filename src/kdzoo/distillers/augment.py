"""Augmentation-driven KD (Good-DA-in-KD, used by DS-SRD): besides the batch x the student learns from an
augmented or mixed copy x_aug made on the device (data/input_mixing.py), with a fresh teacher forward on it:

    augment = lw1 * KD_T(s(x), t(x)) + lw2 * mixCE(s(x_aug)) + lw3 * KD_T(s(x_aug), t(x_aug))

mixCE = lam CE(s(x_aug), y) + (1 - lam) CE(s(x_aug), y[partner]) per row (plain CE for unmixed modes);
teacher_target false replaces t(x_aug) by the teacher's logits on x mixed as the images were. cutmix_pick scores
its pool of n_run * B images without gradients (student_entropy, teacher_entropy: entropy of the softmax at T 1;
kld: per-sample KL(teacher || student) at T) and keeps the B highest. One `augment` term, so a recipe weights
it beside any other (`loss: {ce: 0.1, augment: 0.9, crd: 0.8, proto: 0.8}`, DS-SRD's r, a, b, c).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.data.input_mixing import PixelStats, check_mode, mix_inputs
from kdzoo.distillers.base import Method, Recipes, Requires
from kdzoo.distillers.kd import kd_loss
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError
from kdzoo.models.features import Needs

CRITERIA = ("student_entropy", "teacher_entropy", "kld")


@dataclass
class AugmentParams:
    mode: str = "cutmix_pick"
    n_run: int = 2  # cutmix_pick: cutmix runs in the pool (DS-SRD: 2)
    criterion: str = "student_entropy"  # cutmix_pick: what ranks the pool
    weights: list[float] = field(default_factory=lambda: [1.0, 0.0, 1.0])  # lw1 (KD on x), lw2 (mixCE), lw3
    teacher_target: bool = True  # KD target on x_aug: a fresh teacher forward (else its mixed logits on x)
    T: float = 4.0


def entropy(logits: Tensor) -> Tensor:
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def per_sample_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)


@register_method
class Augment(Method):
    name = "augment"
    reference = "AiXia520/DS-SRD"  # the code its tests compare against
    description = "augmentation-driven KD: KD on an augmented/mixed copy of the batch (cutmix_pick, ...)"
    paper = "Wang et al., What Makes a 'Good' Data Augmentation in Knowledge Distillation, NeurIPS 2022"
    student_needs = Needs(logits=True)
    teacher_needs = Needs(logits=True)
    requires = Requires(live_teacher=True)
    recipes = Recipes(apart=True, loss={"ce": 0.1, "augment": 0.9})
    # live_teacher: x_aug is made in the step: the teacher runs live
    Params = AugmentParams

    def __init__(self, params: AugmentParams, ctx):
        super().__init__(params, ctx)
        p = params
        check_mode(p.mode, p.n_run, "methods.augment")
        if p.criterion not in CRITERIA:
            raise ConfigError(f"methods.augment.criterion: unknown criterion {p.criterion!r} "
                              f"(criteria: {', '.join(CRITERIA)})")
        if len(p.weights) != 3:
            raise ConfigError(f"methods.augment.weights: give 3 weights [KD on x, mixCE, KD on x_aug], got "
                              f"{len(p.weights)}")
        if p.T <= 0:
            raise ConfigError(f"methods.augment.T: must be > 0, got {p.T}")
        info = ctx.info
        self.stats = PixelStats(info.mean, info.std) if info is not None else PixelStats((0.0,), (1.0,))

    def step_losses(self, ctx) -> dict[str, Tensor]:
        b, p = self.binding, self.params
        lw1, lw2, lw3 = p.weights
        s = ctx.features(b.student, b.view).logits
        t = ctx.teacher_features(b).logits
        loss = lw1 * kd_loss(s, t, p.T) if lw1 else s.new_zeros((), dtype=torch.float32)
        if not (lw2 or lw3):
            return {b.term(self.name): loss}
        prefix = b.term(self.name)
        pool = f"{prefix}.pool"
        mixed = mix_inputs(p.mode, ctx.batch.view(b.view), self.stats, p.n_run,
                           score=lambda images: self._score(ctx, ctx.add_view(pool, images)))
        view = ctx.add_view(f"{prefix}.x", mixed.inputs)
        s_aug = ctx.features(b.student, view).logits
        if lw2:
            y = ctx.batch.targets_of(b.view)
            ce = F.cross_entropy(s_aug.float(), y[mixed.source], reduction="none")
            ce_partner = F.cross_entropy(s_aug.float(), y[mixed.partner], reduction="none")
            loss = loss + lw2 * (mixed.lam * ce + (1 - mixed.lam) * ce_partner).mean()
        if lw3:
            if p.teacher_target and mixed.picked is not None and p.criterion != "student_entropy":
                target = ctx.no_grad_features(b.teacher, pool).logits[mixed.picked]  # scored already: no new forward
            elif p.teacher_target:
                target = ctx.features(b.teacher, view).logits
            else:
                target = mixed.interpolate(t.float())
            loss = loss + lw3 * kd_loss(s_aug, target.detach(), p.T)
        return {prefix: loss}

    def _score(self, ctx, view: str) -> Tensor:
        b, criterion = self.binding, self.params.criterion
        if criterion == "student_entropy":
            return entropy(ctx.no_grad_features(b.student, view, keep_statistics=True).logits)
        teacher = ctx.no_grad_features(b.teacher, view).logits
        if criterion == "teacher_entropy":
            return entropy(teacher)
        return per_sample_kl(ctx.no_grad_features(b.student, view, keep_statistics=True).logits, teacher,
                             self.params.T)
