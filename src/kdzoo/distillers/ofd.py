"""OFD: a comprehensive overhaul of feature distillation (Heo et al., ICCV 2019; megvii-research/mdistiller
mdistiller/distillers/OFD.py, itself clovaai/overhaul-distillation's distiller.py).

The student's pre-ReLU stage maps past the stem pass through a connector each (1x1 conv + BN, to the teacher's
width) and match the teacher's pre-ReLU maps (average-pooled to the student's size) by a partial L2 distance:

    target' = max(target, margin_c)
    d(s, t) = (s - target')^2, except 0 where s <= target' and target' <= 0
    L_OFD   = sum_i 2^-(n-1-i) sum_{c,h,w} mean_batch d(connector_i(s_i), pool(t_i))

(mdistiller writes d as three masked terms; clovaai as the max/mask above: the same function.) The margin of channel
c is E[x | x < 0] for x ~ N(beta_c, |gamma_c|^2), the affine output of the teacher BatchNorm that feeds the stage's
pre-activation: beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|), or -3 |gamma| where Phi(-beta/|gamma|) <=
0.001. That BatchNorm is found from the teacher's FeatureSpec (kdzoo.models.bn_before_relu); its weight and bias are
read once, at setup, into the buffers `margin0..`. Stage lists of unequal length keep their last stages (mdistiller's
_align_list). mdistiller's CIFAR-100 recipe: CE 1 + OFD 0.001 (its ImageNet R50->MV1: 0.0001); no warm-up.

Differs from the original in one point that is the engine's: mdistiller's OFD.train (and clovaai's t_net.train())
runs the teacher in train mode (batch-statistics BN); kdzoo's frozen teacher stays in eval mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import wide
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.bn_before_relu import bn_before_relu
from kdzoo.models.features import Needs, feature_spec


def bn_margin(weight: Tensor, bias: Tensor) -> Tensor:
    """Per channel, E[x | x < 0] for x ~ N(bias, weight^2) (-3|weight| where P(x < 0) <= 0.001), in float64
    (mdistiller OFD.init_ofd_modules; scipy's norm.cdf there is torch.special.ndtr here)."""
    std, mean = weight.detach().double().abs(), bias.detach().double()
    z = mean / std
    below = torch.special.ndtr(-z)
    expected = mean - std * torch.exp(-z**2 / 2) / math.sqrt(2 * math.pi) / below
    return torch.where(below > 0.001, expected, -3 * std)


def partial_l2(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """OFD's distance, summed over channels and positions, averaged over the batch (mdistiller feat_loss; computed
    in float32, or float64 for float64 inputs)."""
    source, target = wide(source), wide(target)
    margin = margin.to(source.dtype)
    target = torch.max(target, margin)
    keep = (source > target) | (target > 0)
    return ((source - target) ** 2 * keep).mean(dim=0).sum()


def ofd_loss(connected: list[Tensor], teacher: list[Tensor], margins: list[Tensor]) -> Tensor:
    """sum_i partial_l2(student_i, teacher_i pooled to the student's size, margin_i) / 2^(n-1-i)."""
    n = len(connected)
    total = wide(connected[0]).new_zeros(())
    for i, (s, t, m) in enumerate(zip(connected, teacher, margins)):
        t = F.adaptive_avg_pool2d(wide(t.detach()), s.shape[-2:])
        total = total + partial_l2(s, t, m) / 2 ** (n - 1 - i)
    return total


def connector(s_channels: int, t_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv (no bias, He-normal over fan-out) + BN (weight 1, bias 0): mdistiller's ConnectorConvBN entry."""
    conv = nn.Conv2d(s_channels, t_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channels)))
    bn = nn.BatchNorm2d(t_channels)
    return nn.Sequential(conv, bn)


@dataclass
class OFDParams:
    connector_kernel: int = field(default=1, metadata={"ge": 1})  # mdistiller CFG.OFD.CONNECTOR.KERNEL_SIZE


@register_method
class OFD(Method):
    name = "ofd"
    reference = "megvii-research/mdistiller"  # the code its tests compare against
    description = "overhaul of feature distillation: pre-ReLU stage maps, teacher-BN margins, partial L2"
    paper = "Heo et al., A Comprehensive Overhaul of Feature Distillation, ICCV 2019"
    student_needs = Needs(preact=True)
    teacher_needs = Needs(preact=True)
    Params = OFDParams
    recipes = Recipes(loss={"ce": 1.0, "ofd": 0.001})  # mdistiller CFG.OFD.LOSS: CE_WEIGHT 1, FEAT_WEIGHT 0.001

    def __init__(self, params: OFDParams, ctx):
        super().__init__(params, ctx)
        if params.connector_kernel % 2 == 0:
            raise IncompatiblePairError("ofd: connector_kernel must be odd (the connector keeps the map size)")
        s_pre, t_pre = ctx.student_shapes.preact, ctx.teacher_shapes.preact if ctx.teacher_shapes else None
        if not s_pre or not t_pre or len(s_pre) < 2 or len(t_pre) < 2:
            raise IncompatiblePairError("ofd: both networks need named stages past the stem")
        if ctx.teacher is None:
            raise IncompatiblePairError("ofd: the teacher model is needed at setup (its BatchNorm weights)")
        spec = feature_spec(ctx.teacher)
        if len(spec.stages) != len(t_pre):
            raise IncompatiblePairError("ofd: the teacher's stages differ from its own FeatureSpec's, whose "
                                        "BatchNorms give the margins")
        self.count = min(len(s_pre), len(t_pre)) - 1  # stages past the stem, the last ones of the longer list
        self.s_first, self.t_first = len(s_pre) - self.count, len(t_pre) - self.count
        input_shape = tuple(ctx.info.input_shape) if ctx.info is not None else None
        names = bn_before_relu(ctx.teacher, spec, input_shape)[self.t_first:]
        missing = [self.t_first + i for i, name in enumerate(names) if name is None]
        if missing:
            raise IncompatiblePairError(f"ofd: no BatchNorm feeds the teacher's pre-activation of stage(s) {missing} "
                                        "(a concatenation, e.g. ShuffleNetV2, or no BatchNorm)")
        for i, name in enumerate(names):
            bn = ctx.teacher.get_submodule(name)
            weight = bn.weight if bn.weight is not None else torch.ones(bn.num_features)
            bias = bn.bias if bn.bias is not None else torch.zeros(bn.num_features)
            self.register_buffer(f"margin{i}", bn_margin(weight, bias).float().view(1, -1, 1, 1))
        self.teacher_bns = names  # for logs and tests
        self.connectors = nn.ModuleList(
            connector(int(s[1]), int(t[1]), params.connector_kernel)
            for s, t in zip(s_pre[self.s_first:], t_pre[self.t_first:]))

    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin{i}") for i in range(self.count)]

    def losses(self, batch, s, t, step):
        connected = [c(x) for c, x in zip(self.connectors, s.preact[self.s_first:])]
        return {"ofd": ofd_loss(connected, t.preact[self.t_first:], self.margins())}
