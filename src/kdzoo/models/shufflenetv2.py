"""CIFAR ShuffleNet v2 (Ma et al. 2018), as in HobbitLong/RepDistiller models/ShuffleNetv2.py, plus the 1.5x
width that DefangChen/SimKD adds (`ShuffleV2_1_5`).

Module names and shapes follow the original exactly, so published checkpoints load with `strict=True`.
Changes that leave the state_dict alone:
- the stem's `F.relu` is a parameter-free `relu` module, so a hook can read the stem output;
- each basic block passes its pre-activation output (the untouched half concatenated with the branch before its
  last ReLU, not yet shuffled: exactly RepDistiller's `preact=True` feature) through a parameter-free
  `preact_tap` identity, so a forward pre-hook can read it;
- the fixed 4x4 average pool is adaptive (identical on 32x32 inputs, whose final map is 4x4);
- `in_channels` sets the first conv's input channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.models.features import FeatureSpec
from kdzoo.models.registry import register_model

# net_size -> stage widths (three stages, then the final 1x1 conv) and basic blocks per stage
CONFIGS = {
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


class ShuffleBlock(nn.Module):
    """Channel shuffle: [N, g*C', H, W] -> interleave the g groups."""

    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.size()
        g = self.groups
        return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class SplitBlock(nn.Module):
    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c = int(x.size(1) * self.ratio)
        return x[:, :c, :, :], x[:, c:, :, :]


class BasicBlock(nn.Module):
    """Keep half of the channels, transform the other half (1x1, 3x3 depthwise, 1x1), concatenate, shuffle."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = SplitBlock(split_ratio)
        half = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, stride=1, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.shuffle = ShuffleBlock()
        self.preact_tap = nn.Identity()  # its input is the block's pre-activation output, for feature hooks

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        branch = self.bn3(self.conv3(out))
        self.preact_tap(torch.cat([x1, branch], 1))
        out = torch.cat([x1, F.relu(branch)], 1)
        return self.shuffle(out)


class DownBlock(nn.Module):
    """Stride-2 block (stride 1 in HSAKD's last head): both halves are transformed (left: 3x3 dw, 1x1; right:
    1x1, 3x3 dw, 1x1) and concatenated."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        mid_channels = out_channels // 2
        # left
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=stride, padding=1, groups=in_channels,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        # right
        self.conv3 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.conv4 = nn.Conv2d(mid_channels, mid_channels, kernel_size=3, stride=stride, padding=1,
                               groups=mid_channels, bias=False)
        self.bn4 = nn.BatchNorm2d(mid_channels)
        self.conv5 = nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid_channels)
        self.shuffle = ShuffleBlock()

    def forward(self, x: Tensor) -> Tensor:
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, net_size: float = 1, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        out_channels = CONFIGS[net_size]["out_channels"]
        num_blocks = CONFIGS[net_size]["num_blocks"]
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self._channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers = [DownBlock(self._channels, out_channels)] + [BasicBlock(out_channels) for _ in range(num_blocks)]
        self._channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def feature_spec(self) -> FeatureSpec:
        layers = ("layer1", "layer2", "layer3")
        return FeatureSpec(
            stages=("relu",) + layers,
            head="linear",
            preact=(None,) + tuple(f"{name}.{len(getattr(self, name)) - 1}.preact_tap" for name in layers),
        )


@register_model("ShuffleV2", "ShuffleNet v2 1x for CIFAR (116/232/464 channels)")
def shufflev2(num_classes: int, in_channels: int = 3) -> ShuffleNetV2:
    return ShuffleNetV2(1, num_classes, in_channels)


@register_model("ShuffleV2_1_5", "ShuffleNet v2 1.5x for CIFAR (176/352/704 channels; SimKD's student)")
def shufflev2_1_5(num_classes: int, in_channels: int = 3) -> ShuffleNetV2:
    return ShuffleNetV2(1.5, num_classes, in_channels)
