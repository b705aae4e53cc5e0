"""ND loss, the "++" of KD++ (Wang et al., Improving Knowledge Distillation via Regularizing Feature Norm and
Direction, arXiv 2305.17007; WangYZ1608/Knowledge-Distillation-via-ND).

The student's embedding s (the pooled feature the classifier reads; through a projector when its width differs from
the teacher's) is pulled along the direction of the teacher's class centre c_y of its label, and pushed to a norm at
least the teacher's embedding t:

    L_ND = mean_i [ 1 - <s_i, c_{y_i} / |c_{y_i}|> / max(|s_i|, |t_i|) ]

Follows CIFAR/utils.py DirectNormLoss (python max(s.norm, t.norm): the student's norm unless the teacher's is
larger), its nd_loss_factor being the recipe weight. The centres are, as in the code (and the paper), the class means
of the teacher's embeddings over the training set (its emb_fea_distribution.py, run before training): here an epoch
pass computes them once, at the start of the first epoch, under the plain (unaugmented) pipeline and without the
original's rounding to 4 decimals (`refresh`: at every epoch, for a teacher that moves). `centers: head` uses the
teacher classifier's weight rows instead (no pass).
The projector, where the widths differ, is the original's EmbTrans fc1: BatchNorm1d, Dropout(0.5), Linear (bias 0).

KD++ = CE + KD (T 4) + ND: the recipe carries its resnet32x4 -> resnet8x4 weights (CIFAR/train_cifar.sh),
`pair_overrides` the other CIFAR-100 pairs'.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import FrozenRef, Method, Recipes, Requires
from kdzoo.distillers.common import wide
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError, IncompatiblePairError
from kdzoo.models.features import Needs, get_head

CENTERS = ("class_mean", "head")

# CIFAR/train_cifar.sh (KD++): 1.0*cls + kd*KD + nd*ND per pair; resnet32x4 -> resnet8x4 (3.5, 2.0) is the recipe's.
PAIR_WEIGHTS = {
    ("resnet56", "resnet20"): (1.0, 2.0),
    ("wrn_40_2", "wrn_40_1"): (1.0, 1.5),
    ("ResNet50", "MobileNetV2"): (3.0, 0.5),
    ("resnet32x4", "ShuffleV1"): (2.5, 1.5),
    ("resnet32x4", "ShuffleV2"): (4.0, 0.5),
}


def nd_loss(student_emb: Tensor, teacher_emb: Tensor, centers: Tensor, target: Tensor) -> Tensor:
    """mean_i [1 - <s_i, e_{y_i}> / max(|s_i|, |t_i|)], e_c = c_c / |c_c| (DirectNormLoss.project_center / len)."""
    s, t = wide(student_emb), wide(teacher_emb).detach()
    e = F.normalize(wide(centers).detach()[target], dim=1)
    s_norm, t_norm = s.norm(dim=1), t.norm(dim=1)
    max_norm = torch.where(t_norm > s_norm, t_norm, s_norm)  # python max(a, b): a unless b > a
    return (1.0 - (s * e.to(s.dtype)).sum(dim=1) / max_norm).mean()


def class_means(embedding: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """(num_classes, D): the mean embedding of each class's rows (a class without rows: zeros)."""
    targets = targets.to(embedding.device)
    sums = embedding.new_zeros(num_classes, embedding.shape[1]).index_add_(0, targets, embedding)
    counts = torch.bincount(targets, minlength=num_classes).clamp(min=1).to(embedding.dtype)
    return sums / counts[:, None]


class EmbeddingProjector(nn.Sequential):
    """The student's embedding in the teacher's width: BatchNorm1d, Dropout(0.5), Linear (EmbTrans.fc1)."""

    def __init__(self, s_width: int, t_width: int):
        super().__init__(nn.BatchNorm1d(s_width), nn.Dropout(0.5), nn.Linear(s_width, t_width))
        nn.init.zeros_(self[2].bias)


@dataclass
class NDParams:
    centers: Literal["class_mean", "head"] = "class_mean"  # head: the teacher classifier's weight rows
    refresh: bool = False  # class means again at every epoch (a moving teacher: double_student's EMA; a mutual
    # peer, a teacher with detach_teacher, always refreshes); False: once, as the original's precomputed file


@register_method
class ND(Method):
    name = "nd"
    reference = "WangYZ1608/Knowledge-Distillation-via-ND"  # the code its tests compare against
    description = "ND (KD++): student embeddings along the teacher's class-mean directions, at least its norm"
    paper = "Wang et al., Improving Knowledge Distillation via Regularizing Feature Norm and Direction, " \
            "arXiv 2305.17007 (ECCV 2024)"
    student_needs = Needs(pooled=True)
    teacher_needs = Needs(pooled=True)
    requires = Requires(epoch_passes=True, live_teacher=True)  # the class means: a teacher pass over the images
    Params = NDParams
    recipes = Recipes(loss={"ce": 1.0, "kd": 3.5, "nd": 2.0})  # KD++, resnet32x4 -> resnet8x4 (T 4)

    @classmethod
    def pair_overrides(cls, teacher: str, student: str) -> dict:
        weights = PAIR_WEIGHTS.get((teacher, student))
        return {"loss": {"kd": weights[0], "nd": weights[1]}} if weights is not None else {}

    def __init__(self, params: NDParams, ctx):
        super().__init__(params, ctx)
        if params.centers not in CENTERS:
            raise ConfigError(f"methods.nd.centers: {params.centers!r}; use one of {', '.join(CENTERS)}")
        if ctx.teacher_shapes is None or ctx.student_shapes.pooled is None or ctx.teacher_shapes.pooled is None:
            raise IncompatiblePairError("nd: both networks need a pooled embedding")
        s_width, t_width = int(ctx.student_shapes.pooled[1]), int(ctx.teacher_shapes.pooled[1])
        self.projector = EmbeddingProjector(s_width, t_width) if s_width != t_width else None
        self.train_targets = ctx.train_targets
        self.num_classes = int(ctx.train_targets.max()) + 1 if len(ctx.train_targets) else 0
        self.centers: Optional[Tensor] = None  # the class means (not saved: a resumed run computes them again)
        self.teacher_head: Optional[FrozenRef] = None
        if params.centers == "head":
            head = get_head(ctx.teacher)
            if not isinstance(head, nn.Linear) or head.in_features != t_width:
                raise IncompatiblePairError(f"nd: centers: head needs an nn.Linear teacher head on its {t_width}-wide "
                                            f"embedding (got {type(head).__name__})")
            if not ctx.teacher_logits_trained:
                raise ConfigError("methods.nd.centers: head reads a classifier that never trained; use class_mean")
            self.teacher_head = FrozenRef(head)

    def on_epoch_start(self, epoch: int, passes=None) -> Optional[dict[str, float]]:
        once = not (self.params.refresh or self.binding.detach_teacher)
        if self.teacher_head is not None or passes is None or (self.centers is not None and once):
            return None
        started = time.time()
        embedding = passes.embed(self.binding.teacher, "pooled")
        if len(embedding) != len(self.train_targets):
            raise ConfigError(f"nd: the epoch pass gave {len(embedding)} embeddings for "
                              f"{len(self.train_targets)} training labels")
        self.centers = class_means(embedding, self.train_targets, self.num_classes)
        return {"nd_centers_s": round(time.time() - started, 3)}

    def class_centers(self) -> Tensor:
        if self.teacher_head is not None:
            return self.teacher_head.module.weight
        if self.centers is None:
            raise RuntimeError("nd: no class centres yet (on_epoch_start computes them from an epoch pass)")
        return self.centers

    def losses(self, batch, s, t, step):
        emb = self.projector(s.pooled) if self.projector is not None else s.pooled
        return {"nd": nd_loss(emb, t.pooled, self.class_centers(), batch.targets)}
