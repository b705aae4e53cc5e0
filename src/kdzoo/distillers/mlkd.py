"""MLKD: multi-level logit distillation (Jin et al., CVPR 2023; Jin-Ying/Multi-Level-Logit-Distillation).

Student and teacher see a weak view x (the training augmentation) and a strong view (`strong`: x's augmentation,
then FixMatch's RandAugment(2, 10) and a cutout; data/views.py). With p = softmax(z / T) at each temperature T of
[T, 3, 5, 2, 6] ("prediction augmentation"), and the frozen teacher's softmax at T = 1 on the weak view:

    instance = sum_T f_rows KL_T(weak) + sum_T KL_T(strong)      KL_T = T^2 KL(p_t || p_s), averaged over rows
    batch    = f_rows  sum_T ||p_t p_t^T - p_s p_s^T||^2 / N     (N x N sample-relation Gram matrices, weak view)
    class    = f_class sum_T ||p_t^T p_t - p_s^T p_s||^2 / C     (C x C class-relation matrices, weak view)
    strong_ce = CE(z_s(strong), y)                                (the original's CE is over both views)

f_rows is the share of rows whose teacher confidence max_c p_t is at or below the batch's median (np.percentile
50, linear), f_class the share of classes whose summed teacher probability is: KD_ours.py multiplies each scalar
loss by the boolean mask and averages, so the mask scales the term (by about 0.5) and selects nothing
(`masks: false` drops the shares). The relation matrices are float32 also under autocast.

As mdistiller/distillers/KD_ours.py (KD_ours.forward_train), which produced the published numbers:
- the strong-view instance sum takes its last two temperatures (2 and 6) on the weak view (a copy-paste slip, kept;
  `strong_tail_on_weak: false` puts them on the strong view);
- the batch and class terms run on the weak view only: the code computes them on the strong view too
  (loss_cc_strong, loss_bc_strong) but never adds them; kdzoo does not compute them.
- KD_WEIGHT (0.9) weights the three distillation terms, CE_WEIGHT (0.1) both CEs: the recipe's weights.

`standardize: true` is logit standardization (LS; Sun et al., CVPR 2024; sunshangquan/logit-standardization-KD
mdistiller/distillers/MLKD.py, the code of its MLKD+LS numbers): every instance KL reads z-scored logits (kd.py
standardize_logits); the batch and class terms and the masks' teacher confidences read the raw logits, as there.
Its `--logit-stand --base-temp 2 --kd-weight 9` is the `mlkd_ls` row: T 2 and KD_WEIGHT 9 on all three terms.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes, Requires
from kdzoo.distillers.common import wide
from kdzoo.distillers.kd import standardize_logits
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError
from kdzoo.models.features import Needs

# configs/cifar100/ours/*.yaml: (epochs, lr) per pair; all batch 64, x0.1 at 150/180/210 (also for 480 and 960
# epochs), weight decay 5e-4, momentum 0.9, KD.TEMPERATURE 4, CE 0.1, KD 0.9 (cfg.py defaults).
ORIGINAL_PAIRS = {
    ("resnet32x4", "resnet8x4"): (240, 0.025), ("wrn_40_2", "wrn_16_2"): (240, 0.025),
    ("wrn_40_2", "wrn_40_1"): (240, 0.025), ("resnet56", "resnet20"): (240, 0.025),
    ("resnet110", "resnet32"): (240, 0.025), ("vgg13", "vgg8"): (240, 0.025),
    ("vgg13", "MobileNetV2"): (480, 0.01), ("ResNet50", "MobileNetV2"): (480, 0.01),
    ("wrn_40_2", "ShuffleV1"): (480, 0.01), ("resnet32x4", "ShuffleV1"): (960, 0.01),
    ("resnet32x4", "ShuffleV2"): (960, 0.01),
}
STRONG_VIEWS = {"x": "train", "strong": "strong"}


def instance_loss(z_s: Tensor, z_t: Tensor, T: float) -> Tensor:
    """T^2 KL(softmax(z_t/T) || softmax(z_s/T)), summed over classes, averaged over rows (KD_ours.py kd_loss)."""
    log_p_s, log_p_t = F.log_softmax(wide(z_s) / T, dim=1), F.log_softmax(wide(z_t) / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T**2


def batch_loss(z_s: Tensor, z_t: Tensor, T: float) -> Tensor:
    """||P_t P_t^T - P_s P_s^T||^2 / N, P = softmax(z/T) [N, C] (KD_ours.py bc_loss); float32 or wider, also under
    autocast (which would run the Gram products in bf16)."""
    with torch.autocast(z_s.device.type, enabled=False):
        p_s, p_t = F.softmax(wide(z_s) / T, dim=1), F.softmax(wide(z_t) / T, dim=1)
        return ((p_t @ p_t.T - p_s @ p_s.T) ** 2).sum() / z_s.shape[0]


def class_loss(z_s: Tensor, z_t: Tensor, T: float) -> Tensor:
    """||P_t^T P_t - P_s^T P_s||^2 / C (KD_ours.py cc_loss); float32 or wider, also under autocast."""
    with torch.autocast(z_s.device.type, enabled=False):
        p_s, p_t = F.softmax(wide(z_s) / T, dim=1), F.softmax(wide(z_t) / T, dim=1)
        return ((p_t.T @ p_t - p_s.T @ p_s) ** 2).sum() / z_s.shape[1]


def share_at_or_below_median(values: Tensor) -> Tensor:
    """The share of `values` <= their median (np.percentile(values, 50), linear interpolation): what KD_ours.py's
    `(loss * values.le(median)).mean()` multiplies a scalar loss by."""
    values = wide(values.detach())
    return (values <= torch.quantile(values, 0.5)).to(values.dtype).mean()


def mlkd_losses(s_weak: Tensor, t_weak: Tensor, s_strong: Tensor, t_strong: Tensor, temperatures: list[float],
                masks: bool = True, strong_tail_on_weak: bool = True, standardize: bool = False) -> dict[str, Tensor]:
    """{instance, batch, class} as KD_ours.forward_train's loss_kd, loss_bc, loss_cc at KD_WEIGHT 1; `standardize`:
    the instance KLs on z-scored logits (the LS code's MLKD.py with logit_stand)."""
    p_t = F.softmax(wide(t_weak.detach()), dim=1)
    f_rows = share_at_or_below_median(p_t.max(dim=1).values) if masks else 1.0
    f_class = share_at_or_below_median(p_t.sum(dim=0)) if masks else 1.0
    on_strong = len(temperatures) if not strong_tail_on_weak else min(3, len(temperatures))
    zs_weak, zt_weak, zs_strong, zt_strong = ((standardize_logits(wide(z)) if standardize else z)
                                              for z in (s_weak, t_weak, s_strong, t_strong))
    instance = f_rows * sum(instance_loss(zs_weak, zt_weak, T) for T in temperatures)
    instance = instance + sum(instance_loss(zs_strong, zt_strong, T) for T in temperatures[:on_strong])
    instance = instance + sum(instance_loss(zs_weak, zt_weak, T) for T in temperatures[on_strong:])
    return {"instance": instance,
            "batch": f_rows * sum(batch_loss(s_weak, t_weak, T) for T in temperatures),
            "class": f_class * sum(class_loss(s_weak, t_weak, T) for T in temperatures)}


@dataclass
class MLKDParams:
    T: float = field(default=4.0, metadata={"gt": 0})  # KD.TEMPERATURE: the first temperature (ImageNet: 1)
    more_temperatures: list[float] = field(default_factory=lambda: [3.0, 5.0, 2.0, 6.0])  # fixed in KD_ours.py
    strong_view: str = "strong"  # the batch's view of the strong augmentation
    masks: bool = True  # scale the weak-view terms by the share of rows / classes at or below the median confidence
    strong_tail_on_weak: bool = True  # the strong-view sum reads the weak view past its 3rd temperature (KD_ours.py)
    standardize: bool = False  # logit standardization (LS, CVPR 2024) of the instance KLs' logits


@register_method
class MLKD(Method):
    name = "mlkd"
    reference = "Jin-Ying/Multi-Level-Logit-Distillation"  # the code its tests compare against
    description = "multi-level logit KD: instance KL, batch and class relation matrices, 5 temperatures, weak and " \
                  "strong views"
    paper = "Jin et al., Multi-Level Logit Distillation, CVPR 2023"
    terms = ("mlkd_instance", "mlkd_batch", "mlkd_class", "mlkd_strong_ce")
    task_terms = ("mlkd_strong_ce",)  # the cross-entropy of the strong view: task loss (DOT's grouping)
    student_needs = Needs(logits=True)
    teacher_needs = Needs(logits=True)
    requires = Requires(live_teacher=True)  # the strong view is drawn afresh every step: no cached teacher outputs
    Params = MLKDParams
    recipes = Recipes(loss={"ce": 0.1, "mlkd_strong_ce": 0.1, "mlkd_instance": 0.9, "mlkd_batch": 0.9,
                            "mlkd_class": 0.9}, dataset={"views": dict(STRONG_VIEWS)},
                      # mlkd_ls: the LS code's `--logit-stand --base-temp 2 --kd-weight 9` (KD_WEIGHT 9 on all three
                      # distillation terms, CE_WEIGHT 0.1 on both CEs, the first temperature 2)
                      variants={"mlkd_ls": {"ce": 0.1, "mlkd_strong_ce": 0.1, "mlkd_instance": 9.0, "mlkd_batch": 9.0,
                                            "mlkd_class": 9.0}},
                      variant_params={"mlkd_ls": {"T": 2.0, "standardize": True}})

    def __init__(self, params: MLKDParams, ctx):
        super().__init__(params, ctx)
        if any(T <= 0 for T in params.more_temperatures):
            raise ConfigError(f"methods.mlkd.more_temperatures: must be > 0, got {params.more_temperatures}")

    @classmethod
    def pair_overrides(cls, teacher: str, student: str) -> dict:
        if (teacher, student) not in ORIGINAL_PAIRS:
            return {}
        epochs, lr = ORIGINAL_PAIRS[(teacher, student)]
        return {"epochs": epochs, "optim": {"lr": lr}}

    @property
    def temperatures(self) -> list[float]:
        return [self.params.T, *self.params.more_temperatures]

    def teacher_views(self) -> tuple[str, ...]:
        return (self.binding.teacher_input, self.params.strong_view)

    def extra_reads(self):
        return ((self.binding.student, self.params.strong_view, Needs(logits=True)),)

    def step_losses(self, ctx) -> dict[str, Tensor]:
        b, p = self.binding, self.params
        s_weak = ctx.features(b.student, b.view).logits
        s_strong = ctx.features(b.student, p.strong_view).logits
        t_weak, t_strong = (ctx.features(b.teacher, view).logits for view in (b.teacher_input, p.strong_view))
        if b.detach_teacher:  # a trainable network as the teacher (a frozen one has no graph)
            t_weak, t_strong = t_weak.detach(), t_strong.detach()
        terms = mlkd_losses(s_weak, t_weak, s_strong, t_strong, self.temperatures, p.masks, p.strong_tail_on_weak,
                            p.standardize)
        terms["strong_ce"] = F.cross_entropy(wide(s_strong), ctx.batch.targets_of(p.strong_view))
        return {b.term(f"{self.name}_{k}"): v for k, v in terms.items()}
