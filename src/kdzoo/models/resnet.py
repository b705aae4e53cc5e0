"""CIFAR ResNets (He et al. 2016, 6n+2 layers, three stages), as in HobbitLong/RepDistiller models/resnet.py.

Module names and shapes follow the original exactly, so RepDistiller/mdistiller teacher checkpoints load with
`strict=True`. Changes that leave the state_dict alone:
- the block's final `F.relu` is a `relu_out` module, so a hook can read the pre-activation (RepDistiller's
  `preact=True` features) as its input;
- the fixed `AvgPool2d(8)` is an adaptive pool to 1x1: identical on 32x32 inputs (8x8 final map), and it also
  works for 28x28 and 8x8 inputs;
- `in_channels` sets the first conv's input channels (1 for grayscale data).
"""
from __future__ import annotations

from torch import Tensor, nn

from kdzoo.models.features import FeatureSpec
from kdzoo.models.registry import register_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        # Not in-place: a forward pre-hook reads this module's input as the block's pre-activation.
        self.relu_out = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + residual)


class CifarResNet(nn.Module):
    """Three-stage CIFAR ResNet; `num_filters` = [stem, stage1, stage2, stage3] widths."""

    def __init__(self, depth: int, num_filters: list[int], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(in_channels, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))

    def feature_spec(self) -> FeatureSpec:
        layers = ("layer1", "layer2", "layer3")
        return FeatureSpec(
            stages=("relu",) + layers,
            head="fc",
            preact=(None,) + tuple(f"{name}.{len(getattr(self, name)) - 1}.relu_out" for name in layers),
        )


_THIN = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]  # the "x4" variants


@register_model("resnet8", "CIFAR ResNet-8 (16/32/64 channels)")
def resnet8(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(8, _THIN, num_classes, in_channels)


@register_model("resnet14", "CIFAR ResNet-14 (16/32/64 channels)")
def resnet14(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(14, _THIN, num_classes, in_channels)


@register_model("resnet20", "CIFAR ResNet-20 (16/32/64 channels)")
def resnet20(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, _THIN, num_classes, in_channels)


@register_model("resnet32", "CIFAR ResNet-32 (16/32/64 channels)")
def resnet32(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, _THIN, num_classes, in_channels)


@register_model("resnet44", "CIFAR ResNet-44 (16/32/64 channels)")
def resnet44(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(44, _THIN, num_classes, in_channels)


@register_model("resnet56", "CIFAR ResNet-56 (16/32/64 channels)")
def resnet56(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(56, _THIN, num_classes, in_channels)


@register_model("resnet110", "CIFAR ResNet-110 (16/32/64 channels)")
def resnet110(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(110, _THIN, num_classes, in_channels)


@register_model("resnet8x4", "CIFAR ResNet-8, 4x wider (64/128/256 channels)")
def resnet8x4(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes, in_channels)


@register_model("resnet32x4", "CIFAR ResNet-32, 4x wider (64/128/256 channels)")
def resnet32x4(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes, in_channels)
