"""CIFAR ShuffleNet v1 (Zhang et al. 2018, 3 groups), as in HobbitLong/RepDistiller models/ShuffleNetv1.py.

Module names and shapes follow the original exactly, so published checkpoints load with `strict=True`.
Changes that leave the state_dict alone:
- the stem's and each block's final `F.relu` are parameter-free `relu` / `relu_out` modules, so hooks can read
  the stem output and each block's pre-activation (RepDistiller's `preact=True` features);
- the fixed 4x4 average pool is adaptive (identical on 32x32 inputs, whose final map is 4x4);
- `in_channels` sets the first conv's input channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.models.features import FeatureSpec
from kdzoo.models.registry import register_model


class ShuffleBlock(nn.Module):
    """Channel shuffle: [N, g*C', H, W] -> interleave the g groups."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.size()
        g = self.groups
        return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    """Grouped 1x1 - shuffle - 3x3 depthwise - grouped 1x1; at stride 2 the shortcut is avg-pooled and
    concatenated instead of added."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        g = 1 if in_planes == 24 else groups  # the first block after the 24-channel stem is not grouped
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()
        self.relu_out = nn.ReLU()  # not in-place: a forward pre-hook reads its input as the pre-activation

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return self.relu_out(preact)


class ShuffleNetV1(nn.Module):
    def __init__(self, out_planes: list[int], num_blocks: list[int], groups: int, num_classes: int = 100,
                 in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            # The first block concatenates its (pooled) input, so its branch only makes the missing channels.
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(Bottleneck(self.in_planes, out_planes - cat_planes, stride=2 if i == 0 else 1,
                                     groups=groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def feature_spec(self) -> FeatureSpec:
        layers = ("layer1", "layer2", "layer3")
        return FeatureSpec(
            stages=("relu",) + layers,
            head="linear",
            preact=(None,) + tuple(f"{name}.{len(getattr(self, name)) - 1}.relu_out" for name in layers),
        )


@register_model("ShuffleV1", "ShuffleNet v1 for CIFAR, 3 groups (240/480/960 channels)")
def shufflev1(num_classes: int, in_channels: int = 3) -> ShuffleNetV1:
    return ShuffleNetV1([240, 480, 960], [4, 8, 4], groups=3, num_classes=num_classes, in_channels=in_channels)
