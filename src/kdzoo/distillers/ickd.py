"""ICKD: inter-channel correlation KD (Liu et al., Exploring Inter-Channel Correlation for Diversity-Preserved
Knowledge Distillation, ICCV 2021).

The student's last stage map goes through an embed (conv without bias + BN, C_s -> C_t channels); for each sample
the channel Gram matrix G = F F^T of the (C, H*W) map is L2-normalised row by row, for the embedded student map and
the teacher's map alike, and

    L_ickd = sum_{n, i, j} (G~_s[n, i, j] - G~_t[n, i, j])^2 / (C_t * B^batch_power)

Follows torchdistill (yoshitomo-matsubara/torchdistill: losses/mid_level.py ChSimLoss, models/wrapper.py
ChannelSimilarityEmbed and Student4ICKD, refactored from ADLab-AutoDrive/ICKD's ImageNet code): a 3x3 conv (padding
1) and division by C * B^2 (the defaults). ICKD's own CIFAR-100 code (ADLab-AutoDrive/ICKD Cifar100/distiller_zoo/
ICKD.py) uses a 1x1 conv and divides by C * B: `kernel_size: 1, batch_power: 1`, which the CIFAR-100 recipes set,
as their loss weight 2.5 (-b 2.5) belongs to that form. That code also builds an `embed_t` that joins the optimizer
but never runs; kdzoo has no such module. The Gram matrix is C x C, so the two maps may differ in size.
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

CIFAR100_PARAMS = {"kernel_size": 1, "batch_power": 1}  # ADLab-AutoDrive/ICKD Cifar100 (Embed: 1x1 conv; / (C*B))


def channel_gram(feature_map: Tensor, channels: int) -> Tensor:
    """The row-normalised (B, C, C) channel Gram matrix of a (B, C, H, W) map, viewed as (B, C, -1) as the
    original does (`f.view(bsz, ch, -1)` with the embedded student's channel count)."""
    f = feature_map.reshape(feature_map.shape[0], channels, -1)
    return F.normalize(torch.bmm(f, f.transpose(1, 2)), dim=2)


def ickd_loss(embedded_student: Tensor, teacher_map: Tensor, batch_power: int = 2) -> Tensor:
    """sum((G~_s - G~_t)^2) / (C * B^batch_power), G~ the row-normalised channel Gram matrices (torchdistill
    ChSimLoss.batch_loss: batch_power 2; ICKD's CIFAR code: 1). Computed in at least float32."""
    dtype = torch.promote_types(embedded_student.dtype, torch.float32)
    b, c = embedded_student.shape[:2]
    diff = channel_gram(embedded_student.to(dtype), c) - channel_gram(teacher_map.to(dtype), c)
    return (diff * diff).sum() / (c * b**batch_power)


class ICKDEmbed(nn.Module):
    """Conv (kernel k, stride 1, padding k // 2, no bias) + BN from the student's channels to the teacher's
    (torchdistill ChannelSimilarityEmbed; its BN is called `l2norm` there)."""

    def __init__(self, s_channels: int, t_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(s_channels, t_channels, kernel_size, stride=1, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(t_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


@dataclass
class ICKDParams:
    kernel_size: int = field(default=3, metadata={"ge": 1, "hint": "the embed's conv kernel (1: ICKD's CIFAR code)"})
    batch_power: int = field(default=2, metadata={"ge": 1, "hint": "divide by C * B^batch_power (1: CIFAR code)"})
    stage: int = -1  # the stage map it reads on both sides (the last: ResNet layer4, RepDistiller's feat[-2])


@register_method
class ICKD(Method):
    name = "ickd"
    reference = "yoshitomo-matsubara/torchdistill"  # the code its tests compare against (and ADLab-AutoDrive/ICKD)
    description = "ICKD: the embedded student's inter-channel correlation (normalised Gram) matrix matches the " \
                  "teacher's"
    paper = "Liu et al., Exploring Inter-Channel Correlation for Diversity-Preserved Knowledge Distillation, ICCV 2021"
    student_needs = Needs(stages=True)
    teacher_needs = Needs(stages=True)
    Params = ICKDParams
    # ADLab-AutoDrive/ICKD Cifar100 README: -r 1 -a 0 -b 2.5 (ICKD-C w/o KL), -a 1 -b 2.5 (+ KD at T 4), with the
    # CIFAR code's form of the loss (CIFAR100_PARAMS)
    recipes = Recipes(loss={"ce": 1.0, "ickd": 2.5}, variants={"ickd_kd": {"ce": 1.0, "kd": 1.0, "ickd": 2.5}},
                      variant_params={"ickd": CIFAR100_PARAMS, "ickd_kd": CIFAR100_PARAMS})

    def __init__(self, params: ICKDParams, ctx):
        super().__init__(params, ctx)
        if ctx.teacher_shapes is None:
            raise IncompatiblePairError("ickd: needs a teacher")
        s_stages, t_stages = ctx.student_shapes.stages, ctx.teacher_shapes.stages
        if not s_stages or not t_stages:
            raise IncompatiblePairError("ickd: both networks need named stage maps")
        k = params.stage
        if not (-len(s_stages) <= k < len(s_stages) and -len(t_stages) <= k < len(t_stages)):
            raise IncompatiblePairError(f"ickd: stage {k} out of range: the student has {len(s_stages)} stage "
                                        f"maps, the teacher {len(t_stages)}")
        s_shape, t_shape = s_stages[k], t_stages[k]
        if len(s_shape) != 4 or len(t_shape) != 4:
            raise IncompatiblePairError(f"ickd: stage {k} is not a (B, C, H, W) map on both sides: "
                                        f"{tuple(s_shape)}, {tuple(t_shape)}")
        self.embed = ICKDEmbed(int(s_shape[1]), int(t_shape[1]), params.kernel_size)

    def losses(self, batch, s, t, step):
        k = self.params.stage
        return {"ickd": ickd_loss(self.embed(s.stages[k]), t.stages[k], self.params.batch_power)}
