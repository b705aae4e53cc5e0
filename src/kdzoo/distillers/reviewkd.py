"""ReviewKD: knowledge review by attention-based fusion of multi-level student features (Chen et al., CVPR 2021).

Student levels (the stage maps after the stem, then the pooled vector as a 1x1 map) are fused from the deepest to
the shallowest by ABF modules: a 1x1 conv + BN to `mid` channels; except at the deepest level, an attention map
(1x1 conv on [x, residual] to 2 channels + sigmoid) mixes x with the residual from the deeper level, resized by
nearest interpolation to x's size; the result is resized (nearest) to the teacher level's size, becomes the residual
for the next level, and a 3x3 conv + BN maps it to the teacher's channels. Teacher levels are the pre-activation
stage maps after the stem, then the pooled vector (as in both original implementations). Each level is compared by
HCL: MSE plus the MSE of 4x4, 2x2 and 1x1 average-pooled maps (only the sizes smaller than the map), weighted
1, 1/2, 1/4, ... and divided by the sum of the weights used; levels are summed. The term ramps up linearly over the
first `warmup_epochs` epochs (mdistiller's 1-based epoch counter).

Level matching: the originals list shapes per pair and every published pair has as many student as teacher levels.
Here, when the counts differ, the deepest L = min(n_student, n_teacher) levels of each side are paired (the
pooled vectors always pair with each other) and the shallower extra levels of the deeper network are left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import Method, Recipes, SetupContext
from kdzoo.distillers.common import warmup_factor
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.features import Features, Needs

# Published ReviewKD loss weights for CIFAR-100 (dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh
# --kd-loss-weight; mdistiller configs/cifar100/reviewkd.yaml agrees on resnet32x4->resnet8x4). The release has no
# VGG or MobileNetV2 runs: those pairs keep the default weight 1 (mdistiller's REVIEWKD_WEIGHT default).
PAIR_WEIGHT = {
    ("resnet32x4", "resnet8x4"): 5.0,
    ("wrn_40_2", "wrn_16_2"): 5.0,
    ("wrn_40_2", "wrn_40_1"): 5.0,
    ("wrn_40_2", "ShuffleV1"): 5.0,
    ("resnet32x4", "ShuffleV1"): 5.0,
    ("resnet32x4", "ShuffleV2"): 8.0,
    ("resnet56", "resnet20"): 0.6,
    ("resnet110", "resnet32"): 1.0,
}

PYRAMID = (4, 2, 1)


def hcl_level(fs: Tensor, ft: Tensor) -> Tensor:
    """HCL of one level: (MSE + sum_k w_k MSE(pool_k(fs), pool_k(ft))) / (1 + sum_k w_k), w halving from 1/2, over the
    pyramid sizes smaller than the map's height."""
    fs, ft = fs.float(), ft.float()
    h = fs.shape[2]
    loss = F.mse_loss(fs, ft)
    weight = total = 1.0
    for size in PYRAMID:
        if size >= h:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
        total += weight
    return loss / total


def hcl_loss(fstudent: list[Tensor], fteacher: list[Tensor]) -> Tensor:
    """Hierarchical context loss summed over the levels."""
    return sum(hcl_level(fs, ft) for fs, ft in zip(fstudent, fteacher))


class ABF(nn.Module):
    """Attention-based fusion of one student level with the residual from the deeper levels."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = (nn.Sequential(nn.Conv2d(mid_channels * 2, 2, kernel_size=1), nn.Sigmoid())
                         if fuse else None)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Optional[Tensor], out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


def _levels_shapes(shapes: Features, use_preact: bool, side: str) -> list[tuple[int, int, int]]:
    """(C, H, W) of each level: stage maps after the stem, then the pooled vector as a 1x1 map."""
    maps = shapes.preact if use_preact else shapes.stages
    if not maps or len(maps) < 2 or shapes.pooled is None:
        raise IncompatiblePairError(f"reviewkd: the {side} needs named stages (stem + at least one stage) and a "
                                    "pooled embedding")
    out = []
    for shape in maps[1:]:
        if len(shape) != 4:
            raise IncompatiblePairError(f"reviewkd: the {side}'s stage outputs must be (B, C, H, W) maps, got "
                                        f"{tuple(shape)}")
        out.append((shape[1], shape[2], shape[3]))
    out.append((shapes.pooled[1], 1, 1))
    return out


def student_levels(s: Features) -> list[Tensor]:
    return list(s.stages[1:]) + [s.pooled[:, :, None, None]]


def teacher_levels(t: Features) -> list[Tensor]:
    return list(t.preact[1:]) + [t.pooled[:, :, None, None]]


@dataclass
class ReviewKDParams:
    warmup_epochs: float = 20.0  # linear ramp: min((epoch + 1) / warmup_epochs, 1)
    max_mid_channel: int = 512  # ABF width = min(max_mid_channel, student's pooled width)


@register_method
class ReviewKD(Method):
    name = "reviewkd"
    reference = "dvlab-research/ReviewKD"  # the code its tests compare against
    description = "ReviewKD: ABF-fused multi-level student features matched to teacher levels by HCL"
    paper = "Chen et al., Distilling Knowledge via Knowledge Review, CVPR 2021"
    student_needs = Needs(logits=True, pooled=True, stages=True)
    teacher_needs = Needs(pooled=True, preact=True)
    Params = ReviewKDParams
    recipes = Recipes(loss={"ce": 1.0, "reviewkd": 1.0})

    @classmethod
    def pair_overrides(cls, teacher: str, student: str) -> dict:
        weight = PAIR_WEIGHT.get((teacher, student))
        return {"loss": {"reviewkd": weight}} if weight is not None else {}

    def __init__(self, params: ReviewKDParams, ctx: SetupContext):
        super().__init__(params, ctx)
        s_levels = _levels_shapes(ctx.student_shapes, False, "student")
        t_levels = _levels_shapes(ctx.teacher_shapes, True, "teacher")
        n = min(len(s_levels), len(t_levels))
        self.skip_student = len(s_levels) - n  # shallow levels left out when the counts differ
        self.skip_teacher = len(t_levels) - n
        s_levels, t_levels = s_levels[-n:], t_levels[-n:]
        mid = min(params.max_mid_channel, s_levels[-1][0])
        # Deepest first (the order of the fusion); only the deepest ABF has no residual to fuse.
        self.abfs = nn.ModuleList(ABF(s[0], mid, t[0], fuse=i > 0)
                                  for i, (s, t) in enumerate(zip(reversed(s_levels), reversed(t_levels))))
        self.out_sizes = [(t[1], t[2]) for t in t_levels]  # shallow to deep, from the probe

    def fuse(self, levels: list[Tensor], out_sizes: Optional[list[tuple[int, int]]] = None) -> list[Tensor]:
        """ABF outputs for the student levels (shallow to deep), at the teacher levels' channels and sizes."""
        levels = levels[self.skip_student:]
        sizes = out_sizes or self.out_sizes
        results: list[Tensor] = []
        residual = None
        for abf, x, size in zip(self.abfs, reversed(levels), reversed(sizes)):
            out, residual = abf(x, residual, size)
            results.append(out)
        results.reverse()
        return results

    def losses(self, batch, s, t, step):
        targets = teacher_levels(t)[self.skip_teacher:]
        outs = self.fuse(student_levels(s), [tuple(f.shape[-2:]) for f in targets])
        factor = warmup_factor(step.epoch, self.params.warmup_epochs)
        return {"reviewkd": factor * hcl_loss(outs, targets)}
