"""CIFAR MobileNetV2 (expansion 6, width 0.5) in its two published layouts, which have the same parameters:
- `MobileNetV2`: HobbitLong/RepDistiller models/mobilenetv2.py (`mobile_half`), the name the KD papers' tables
  use and what RepDistiller-style recipes train: a stride-2 stem, so the stages run at 16x16 ... 2x2 on 32x32
  inputs; the classifier is `classifier.0`.
- `MobileNetV2_hsakd`: winycg/HSAKD models/mobilenetv2.py (`mobilenetV2`), what HSAKD's recipes train: a
  stride-1 stem (stages at 32x32 ... 4x4, four times the compute) and a bare `classifier` Linear.

Module names and shapes follow each original exactly, so published checkpoints load with `strict=True`. Changes
that leave the state_dict alone:
- the final `AvgPool2d(2, ceil_mode=True)` (2x2 final map on 32x32 inputs) is an adaptive pool to 1x1: the
  same on 32x32 inputs, and it works for 8x8 inputs whose final map is 1x1;
- `in_channels` sets the first conv's input channels.
The stage features are the outputs of the stem and of block groups 1, 2, 4 and 6; they end in a linear
bottleneck (no ReLU), so RepDistiller's pre-activation features equal them.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from kdzoo.models.features import FeatureSpec
from kdzoo.models.registry import register_model


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


def conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection, with identity shortcut at stride 1 and equal widths."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, expansion: int = 6, num_classes: int = 100, width_mult: float = 0.5, in_channels: int = 3,
                 stem_stride: int = 2, bare_classifier: bool = False):
        super().__init__()
        # expansion t, output channels c, repeats n, first stride s: one entry per block group
        settings = [
            [1, 16, 1, 1],
            [expansion, 24, 2, 1],
            [expansion, 32, 3, 2],
            [expansion, 64, 4, 2],
            [expansion, 96, 3, 1],
            [expansion, 160, 3, 2],
            [expansion, 320, 1, 1],
        ]
        channels = int(32 * width_mult)
        self.conv1 = conv_bn(in_channels, channels, stem_stride)
        self.blocks = nn.ModuleList()
        for t, c, n, s in settings:
            out_channels = int(c * width_mult)
            group = []
            for stride in [s] + [1] * (n - 1):
                group.append(InvertedResidual(channels, out_channels, stride, t))
                channels = out_channels
            self.blocks.append(nn.Sequential(*group))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_1x1_bn(channels, self.last_channel)
        linear = nn.Linear(self.last_channel, num_classes)
        self.classifier = linear if bare_classifier else nn.Sequential(linear)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        for group in self.blocks:
            out = group(out)
        out = self.avgpool(self.conv2(out))
        return self.classifier(out.flatten(1))

    def feature_spec(self) -> FeatureSpec:
        head = "classifier" if isinstance(self.classifier, nn.Linear) else "classifier.0"
        return FeatureSpec(stages=("conv1", "blocks.1", "blocks.2", "blocks.4", "blocks.6"), head=head)


@register_model("MobileNetV2", "MobileNetV2 for CIFAR, width 0.5 (RepDistiller's mobile_half)")
def mobilenetv2(num_classes: int, in_channels: int = 3) -> MobileNetV2:
    return MobileNetV2(expansion=6, num_classes=num_classes, width_mult=0.5, in_channels=in_channels)


@register_model("MobileNetV2_hsakd", "MobileNetV2 for CIFAR, width 0.5, HSAKD's layout (stride-1 stem: stages at 32x32 "
                "... 4x4)")
def mobilenetv2_hsakd(num_classes: int, in_channels: int = 3) -> MobileNetV2:
    return MobileNetV2(expansion=6, num_classes=num_classes, width_mult=0.5, in_channels=in_channels, stem_stride=1,
                       bare_classifier=True)
