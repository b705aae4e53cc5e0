"""Wide ResNets (Zagoruyko & Komodakis 2016, pre-activation blocks), as in HobbitLong/RepDistiller models/wrn.py.

Module names and shapes follow the original exactly, so published checkpoints load with `strict=True`.
Changes that leave the state_dict alone:
- `relu1` of every block and the final `relu` are not in-place: RepDistiller's pre-activation of a stage is the
  next BatchNorm applied to it (the `bn1` of the next stage's first block, or the final `bn1`), and a forward
  pre-hook on the ReLU that follows reads exactly that; an in-place ReLU would overwrite it;
- the fixed 8x8 average pool is adaptive (identical on 32x32 inputs);
- `in_channels` sets the first conv's input channels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.models.features import FeatureSpec
from kdzoo.models.registry import register_model


class BasicBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv with a 1x1 conv shortcut when the width or stride changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        # With a projection shortcut the shortcut also starts from the activated input (as in the original).
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return torch.add(shortcut, self.conv2(out))


class NetworkBlock(nn.Module):
    """One stage: `nb_layers` blocks, the first one changing width and stride."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(nb_layers)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 100, widen_factor: int = 1, drop_rate: float = 0.0,
                 in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def feature_spec(self) -> FeatureSpec:
        # Stage maps are the raw residual sums; their "pre-activation" (RepDistiller) is the BN that follows.
        return FeatureSpec(
            stages=("conv1", "block1", "block2", "block3"),
            head="fc",
            preact=(None, "block2.layer.0.relu1", "block3.layer.0.relu1", "relu"),
        )


@register_model("wrn_16_1", "Wide ResNet 16-1 (16/32/64 channels)")
def wrn_16_1(num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(16, num_classes, widen_factor=1, in_channels=in_channels)


@register_model("wrn_16_2", "Wide ResNet 16-2 (32/64/128 channels)")
def wrn_16_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(16, num_classes, widen_factor=2, in_channels=in_channels)


@register_model("wrn_40_1", "Wide ResNet 40-1 (16/32/64 channels)")
def wrn_40_1(num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(40, num_classes, widen_factor=1, in_channels=in_channels)


@register_model("wrn_40_2", "Wide ResNet 40-2 (32/64/128 channels)")
def wrn_40_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(40, num_classes, widen_factor=2, in_channels=in_channels)
