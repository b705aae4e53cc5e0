"""CIFAR VGGs with BatchNorm and a single linear classifier, as in HobbitLong/RepDistiller models/vgg.py.

Registered under the plain names (`vgg13` is RepDistiller's `vgg13_bn`, as in its model_dict). Module names and
shapes follow the original exactly, so published checkpoints load with `strict=True`. Changes that leave the
state_dict alone:
- each block ends with its ReLU module (the original drops it from the Sequential and applies `F.relu` in
  forward). It is the last, parameter-free entry, so the keys do not move, and its input is the block's
  pre-activation (RepDistiller's `preact=True` features);
- max pools use `ceil_mode=True`: identical on even sizes (all of 32x32), and 28x28 or 8x8 inputs still work;
- `in_channels` sets the first conv's input channels.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from kdzoo.models.features import FeatureSpec
from kdzoo.models.registry import register_model

# Conv widths of the five blocks; a max pool follows blocks 0-2 (and block 3 on 64x64 inputs).
CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def make_block(widths: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        # The last ReLU is not in-place: a forward pre-hook reads its input as the block's pre-activation.
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU() if last else nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, cfg: list[list[int]], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.block0 = make_block(cfg[0], in_channels)
        self.block1 = make_block(cfg[1], cfg[0][-1])
        self.block2 = make_block(cfg[2], cfg[1][-1])
        self.block3 = make_block(cfg[3], cfg[2][-1])
        self.block4 = make_block(cfg[4], cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)

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
        height = x.shape[2]
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.block3(self.pool2(self.block2(x)))
        if height == 64:  # the original pools a fourth time only for 64x64 inputs (TinyImageNet)
            x = self.pool3(x)
        x = self.block4(x)
        return self.classifier(self.pool4(x).flatten(1))

    def feature_spec(self) -> FeatureSpec:
        blocks = [f"block{i}" for i in range(5)]
        # The stem's feature is post-ReLU in both of RepDistiller's modes, hence None.
        return FeatureSpec(
            stages=tuple(blocks),
            head="classifier",
            preact=(None,) + tuple(f"{name}.{len(getattr(self, name)) - 1}" for name in blocks[1:]),
        )


@register_model("vgg8", "VGG-8 with BatchNorm, CIFAR layout")
def vgg8(num_classes: int, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg8"], num_classes, in_channels)


@register_model("vgg11", "VGG-11 with BatchNorm, CIFAR layout")
def vgg11(num_classes: int, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg11"], num_classes, in_channels)


@register_model("vgg13", "VGG-13 with BatchNorm, CIFAR layout")
def vgg13(num_classes: int, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg13"], num_classes, in_channels)


@register_model("vgg16", "VGG-16 with BatchNorm, CIFAR layout")
def vgg16(num_classes: int, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg16"], num_classes, in_channels)


@register_model("vgg19", "VGG-19 with BatchNorm, CIFAR layout")
def vgg19(num_classes: int, in_channels: int = 3) -> VGG:
    return VGG(CONFIGS["vgg19"], num_classes, in_channels)
