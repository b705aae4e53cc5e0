"""ResNet-18/34/50 with a CIFAR stem (3x3 conv, no max pool; four stages of 64-512 channels), as in
HobbitLong/RepDistiller models/resnetv2.py. The file keeps the original's name; this is the standard
post-activation ResNet, not the pre-activation "ResNet v2".

Module names and shapes follow the original exactly, so published checkpoints load with `strict=True`.
Changes that leave the state_dict alone:
- the stem's and each block's final `F.relu` are parameter-free `relu` / `relu_out` modules, so hooks can read
  the stem output and each block's pre-activation (RepDistiller's `preact=True` features);
- `in_channels` sets the first conv's input channels.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.models.features import FeatureSpec
from kdzoo.models.registry import register_model


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (an empty Sequential, as in the original) or a strided 1x1 conv + BN projection."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)
        self.relu_out = nn.ReLU()  # not in-place: a forward pre-hook reads its input as the pre-activation

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)
        self.relu_out = nn.ReLU()  # not in-place: a forward pre-hook reads its input as the pre-activation

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu_out(out + self.shortcut(x))


class ResNetV2(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: list[int], num_classes: int = 100,
                 in_channels: int = 3):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.avgpool(out).flatten(1))

    def feature_spec(self) -> FeatureSpec:
        layers = ("layer1", "layer2", "layer3", "layer4")
        return FeatureSpec(
            stages=("relu",) + layers,
            head="linear",
            preact=(None,) + tuple(f"{name}.{len(getattr(self, name)) - 1}.relu_out" for name in layers),
        )


@register_model("ResNet18", "ResNet-18 with a CIFAR stem (64-512 channels)")
def resnet18(num_classes: int, in_channels: int = 3) -> ResNetV2:
    return ResNetV2(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


@register_model("ResNet34", "ResNet-34 with a CIFAR stem (64-512 channels)")
def resnet34(num_classes: int, in_channels: int = 3) -> ResNetV2:
    return ResNetV2(BasicBlock, [3, 4, 6, 3], num_classes, in_channels)


@register_model("ResNet50", "ResNet-50 (bottleneck) with a CIFAR stem (256-2048 channels)")
def resnet50(num_classes: int, in_channels: int = 3) -> ResNetV2:
    return ResNetV2(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)
