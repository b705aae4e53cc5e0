"""CTKD: curriculum temperature for knowledge distillation (Li et al., AAAI 2023; zhengli97/CTKD).

KD at a temperature the method learns: a temperature module (`global`: one parameter; `instance`: a small MLP,
one temperature per sample) gives a raw value r, mapped into (t_start, t_start + t_end) by

    T = t_start + t_end * sigmoid(GRL_lambda(r))          (helper/loops.py train_distill: 1 + 20 sigmoid(.))
    L_CTKD = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))  summed over classes, averaged over the batch

The gradient reversal layer is the identity forward and multiplies the gradient by lambda backward
(models/temp_global.py GradientReversalFunction), so the student descends the KD loss while the temperature
ascends it (adversarially), with a strength that grows by the cosine curriculum of train_student.py CosineDecay,
set once per epoch from the 1-based epoch n:

    lambda_n = decay_min + (decay_max - decay_min) * (1 + cos(pi * min(n, loops) / loops)) / 2

The scripts' `--decay_max 0 --decay_min -1 --decay_loops 10` give 0 -> -1 over the first 10 epochs, then -1: the
code's negative factor is the paper's reversal by -lambda with lambda 0 -> 1 (its Eq. 11 writes cos(pi + x) =
-cos x). There is no other clamp on T or on the module's output than the sigmoid. The temperature module is an
adapter of the method: the run's optimizer trains it with the student's lr, momentum and weight decay, as the
original's single SGD over [student, Global_T] does.

`instance`: the original's instance-wise module is not in the repository (the README links the code only as a
download); kdzoo follows its description (the project page's figure: teacher and student probabilities,
concatenated, into an MLP of two 1x1 convolutions, one temperature per sample) with a hidden width of its own
choosing and detached inputs (only the temperature module gets the reversed gradient), and the README's per-sample
loss, which adds 1e-7 to the teacher's probabilities. `base: dkd` is the original's CTKD + DKD (`--distill dkd
-r 1 -a 0 -b 1`): DKD's loss at the learned global temperature, without DKD's warm-up, as its loops.py has it.

`standardize: true` is logit standardization (LS; Sun et al., CVPR 2024; sunshangquan/logit-standardization-KD
CTKD/distiller_zoo/KD.py DistillKL_logit_stand): the KD loss reads both networks' z-scored logits (kd.py
standardize_logits) at the learned temperature; the temperature module reads the raw logits. Its train_student.py
builds that loss when `--logit_stand` is NOT given (the flag's test is inverted), as its scripts/run_cifar_distill.sh
runs it: `-r 0.1 -a 9 -b 0`, the `ctkd_ls` row. Its logs (logs/CTKD/*,2,9.txt) show the learned temperature settling
at 2.00, not 1: the row sets t_start 2 (the logs' base temperature 2). Only the KD base has it (no LS code for dkd).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import wide
from kdzoo.distillers.kd import standardize_logits
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError
from kdzoo.models.features import Needs


def curriculum_lambda(epoch: int, loops: float, decay_max: float = 0.0, decay_min: float = -1.0) -> float:
    """The GRL factor in 1-based `epoch`: cosine from decay_max (epoch 0) to decay_min (epoch >= loops)
    (zhengli97/CTKD train_student.py CosineDecay.get_value)."""
    i = min(max(epoch, 0), loops)
    return decay_min + (decay_max - decay_min) * (math.cos(i * math.pi / loops) + 1.0) * 0.5


class _GradientScale(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `scale` (a negative scale reverses it)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    return _GradientScale.apply(x, scale)


class GlobalTemperature(nn.Module):
    """One learnable raw temperature, initialised to 1 (models/temp_global.py Global_T)."""

    def __init__(self):
        super().__init__()
        self.raw = nn.Parameter(torch.ones(1))

    def forward(self, teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
        return self.raw


class InstanceTemperature(nn.Module):
    """One raw temperature per sample from the concatenated (detached) teacher and student probabilities:
    two 1x1 convolutions (linear layers) with a ReLU between them."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * num_classes, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
        probs = torch.cat([F.softmax(wide(teacher_logits), dim=1), F.softmax(wide(student_logits), dim=1)], 1)
        return self.mlp(probs.detach().to(self.mlp[0].weight.dtype)).squeeze(1)


def ctkd_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: Tensor, eps: float = 0.0) -> Tensor:
    """mean_i T_i^2 KL(softmax(z_t,i / T_i) || softmax(z_s,i / T_i)) for a temperature of shape [1] (global:
    distiller_zoo/KD.py DistillKL, KLDivLoss batchmean * T * T) or [B] (instance). eps > 0 is the README's
    instance-wise KL_Loss, which adds eps to the teacher's probabilities (inside the log too)."""
    T = temperature.reshape(-1, 1)
    log_p_s = F.log_softmax(wide(student_logits) / T, dim=1)
    if eps > 0:
        p_t = F.softmax(wide(teacher_logits) / T, dim=1) + eps
        kl = (p_t * (p_t.log() - log_p_s)).sum(dim=1)
    else:
        log_p_t = F.log_softmax(wide(teacher_logits) / T, dim=1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return (T.squeeze(1) ** 2 * kl).mean()


def ctkd_dkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: Tensor, alpha: float,
                  beta: float) -> Tensor:
    """alpha TCKD + beta NCKD at a learned global temperature (distiller_zoo/DKD.py DKDloss, as CTKD's loops.py
    calls it): T^2 * (sum of the KL over the batch) / B for the binary target/non-target split and for the
    non-target classes (the -1000 shift). Both sides in log space, so the temperature, which also scales the
    teacher, gets a finite gradient where a teacher probability is 0 (the original's kl_div under PyTorch 2: NaN)."""
    T = temperature.reshape(())
    z_s, z_t = wide(student_logits) / T, wide(teacher_logits) / T
    gt = torch.zeros_like(z_s, dtype=torch.bool).scatter_(1, target.reshape(-1, 1), True)

    def split(log_p: Tensor) -> Tensor:  # log [p_target, p_rest]
        return torch.stack([log_p.masked_fill(~gt, float("-inf")).logsumexp(1),
                            log_p.masked_fill(gt, float("-inf")).logsumexp(1)], dim=1)

    tckd = F.kl_div(split(F.log_softmax(z_s, 1)), split(F.log_softmax(z_t, 1)), reduction="sum", log_target=True)
    shift = 1000.0 * gt
    nckd = F.kl_div(F.log_softmax(z_s - shift, 1), F.log_softmax(z_t - shift, 1), reduction="sum", log_target=True)
    return (alpha * tckd + beta * nckd) * T**2 / z_s.shape[0]


@dataclass
class CTKDParams:
    temperature: Literal["global", "instance"] = "global"  # one learned temperature, or one per sample
    t_start: float = field(default=1.0, metadata={"gt": 0, "hint": "the lowest temperature (--t_start)"})
    t_end: float = field(default=20.0, metadata={"ge": 0, "hint": "the temperature's span above t_start (--t_end)"})
    decay_max: float = 0.0  # the GRL factor at epoch 0 (--decay_max)
    decay_min: float = -1.0  # the GRL factor from epoch `decay_loops` on (--decay_min): negative reverses
    decay_loops: float = field(default=10.0, metadata={"gt": 0, "hint": "epochs of the cosine (--decay_loops)"})
    instance_hidden: int = field(default=128, metadata={"ge": 1, "hint": "the instance MLP's width"})
    base: Literal["kd", "dkd"] = "kd"  # dkd: DKD's loss at the learned temperature (the original's CTKD + DKD)
    dkd_alpha: float = field(default=1.0, metadata={"ge": 0})  # --dkd_alpha
    dkd_beta: float = field(default=2.0, metadata={"ge": 0})  # --dkd_beta (its default and res56 -> res20 value)
    standardize: bool = False  # logit standardization (LS, CVPR 2024) of the KD loss's logits (base kd)


@register_method
class CTKD(Method):
    name = "ctkd"
    reference = "zhengli97/CTKD"  # the code its tests compare against
    description = "curriculum temperature KD: KD at a learned temperature trained through a reversed gradient " \
                  "whose strength grows by a cosine curriculum"
    paper = "Li et al., Curriculum Temperature for Knowledge Distillation, AAAI 2023"
    student_needs = Needs(logits=True)
    teacher_needs = Needs(logits=True)
    Params = CTKDParams
    # scripts/run_cifar_distill.sh: --distill kd -r 0.1 -a 0.9 -b 0 --have_mlp 1 --mlp_name global
    # ctkd_ls: the LS code's CTKD/scripts/run_cifar_distill.sh, -r 0.1 -a 9 -b 0 with DistillKL_logit_stand
    recipes = Recipes(loss={"ce": 0.1, "ctkd": 0.9}, variants={"ctkd_ls": {"ce": 0.1, "ctkd": 9.0}},
                      variant_params={"ctkd_ls": {"t_start": 2.0, "standardize": True}})

    def __init__(self, params: CTKDParams, ctx):
        super().__init__(params, ctx)
        if params.standardize and params.base == "dkd":
            raise ConfigError("methods.ctkd: standardize takes base kd only (the LS code's CTKD)")
        if params.temperature == "instance":
            if params.base == "dkd":
                raise ConfigError("methods.ctkd: base dkd takes the global temperature only")
            self.temperature_module = InstanceTemperature(ctx.student_shapes.logits[-1], params.instance_hidden)
        else:
            self.temperature_module = GlobalTemperature()

    def gradient_factor(self, epoch: int) -> float:
        """The GRL factor in the 0-based `epoch` of the run (the original counts epochs from 1)."""
        p = self.params
        return curriculum_lambda(epoch + 1, p.decay_loops, p.decay_max, p.decay_min)

    def temperature(self, student_logits: Tensor, teacher_logits: Tensor, factor: float) -> Tensor:
        raw = scale_gradient(self.temperature_module(teacher_logits, student_logits), factor)
        return self.params.t_start + self.params.t_end * torch.sigmoid(raw)

    def losses(self, batch, s, t, step):
        p = self.params
        T = self.temperature(s.logits, t.logits, self.gradient_factor(step.epoch))
        if p.base == "dkd":
            return {"ctkd": ctkd_dkd_loss(s.logits, t.logits, batch.targets, T, p.dkd_alpha, p.dkd_beta)}
        z_s, z_t = s.logits, t.logits
        if p.standardize:
            z_s, z_t = standardize_logits(wide(z_s)), standardize_logits(wide(z_t))
        return {"ctkd": ctkd_kd_loss(z_s, z_t, T, eps=1e-7 if p.temperature == "instance" else 0.0)}

    def on_epoch_start(self, epoch: int, passes=None):
        stats = {"ctkd_lambda": self.gradient_factor(epoch)}
        if isinstance(self.temperature_module, GlobalTemperature):
            raw = self.temperature_module.raw.detach()
            stats["ctkd_T"] = float(self.params.t_start + self.params.t_end * torch.sigmoid(raw))
        return stats
