"""The auxiliary heads of each architecture family, built with the backbone's own stage constructors and fresh
parameters (see `aux_net.py` for the layout rule)."""
from __future__ import annotations

from typing import Optional

from torch import nn

from kdzoo.models.aux_net import AuxNet
from kdzoo.models.mobilenetv2 import InvertedResidual, MobileNetV2, conv_1x1_bn
from kdzoo.models.resnet import BasicBlock as ResBlock
from kdzoo.models.resnet import CifarResNet
from kdzoo.models.resnetv2 import ResNetV2
from kdzoo.models.shufflenetv1 import Bottleneck as V1Bottleneck
from kdzoo.models.shufflenetv1 import ShuffleNetV1
from kdzoo.models.shufflenetv2 import BasicBlock as V2Block
from kdzoo.models.shufflenetv2 import DownBlock, ShuffleNetV2
from kdzoo.models.vgg import VGG, make_block
from kdzoo.models.wrn import NetworkBlock, WideResNet


def _resnet_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    builder = CifarResNet.__new__(CifarResNet)  # only its _make_layer, which reads and sets `inplanes`
    builder.inplanes = inplanes
    return CifarResNet._make_layer(builder, planes, blocks, stride)


def resnet_aux(backbone: CifarResNet, arch: str, num_classes: int) -> AuxNet:
    widths = [backbone.layer1[0].conv1.out_channels, backbone.layer2[0].conv1.out_channels,
              backbone.layer3[0].conv1.out_channels]
    n = len(backbone.layer1)
    c1, c2, c3 = (w * ResBlock.expansion for w in widths)
    branches = [nn.Sequential(_resnet_stage(c1, widths[1], n, 2), _resnet_stage(c2, widths[2], n, 2)),
                nn.Sequential(_resnet_stage(c2, widths[2], n, 2)),
                nn.Sequential(_resnet_stage(c3, widths[2], n, 1))]
    return AuxNet(backbone, arch, ("layer1", "layer2", "layer3"), branches, c3, num_classes)


def wrn_aux(backbone: WideResNet, arch: str, num_classes: int) -> AuxNet:
    n = len(backbone.block1.layer)
    c1, c2, c3 = (getattr(backbone, f"block{i}").layer[0].conv1.out_channels for i in (1, 2, 3))

    def post() -> list[nn.Module]:  # pre-activation blocks: the head ends with the final BN + ReLU
        return [nn.BatchNorm2d(c3), nn.ReLU(inplace=True)]

    branches = [nn.Sequential(NetworkBlock(n, c1, c2, 2), NetworkBlock(n, c2, c3, 2), *post()),
                nn.Sequential(NetworkBlock(n, c2, c3, 2), *post()),
                nn.Sequential(NetworkBlock(n, c3, c3, 1), *post())]
    return AuxNet(backbone, arch, ("block1", "block2", "block3"), branches, c3, num_classes)


def vgg_aux(backbone: VGG, arch: str, num_classes: int) -> AuxNet:
    """4 heads, on blocks 0, 1, 2 and 4 (post-ReLU): fresh copies of the later blocks with their max pools;
    the last head re-runs blocks 3 and 4 at stride 1."""
    cfg = [[m.out_channels for m in getattr(backbone, f"block{i}") if isinstance(m, nn.Conv2d)] for i in range(5)]
    block = lambda i, c_in: make_block(cfg[i], c_in)  # noqa: E731
    pool = lambda: nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)  # noqa: E731
    c = [widths[-1] for widths in cfg]
    branches = [nn.Sequential(pool(), block(1, c[0]), pool(), block(2, c[1]), pool(), block(3, c[2]), block(4, c[3])),
                nn.Sequential(pool(), block(2, c[1]), pool(), block(3, c[2]), block(4, c[3])),
                nn.Sequential(pool(), block(3, c[2]), block(4, c[3])),
                nn.Sequential(block(3, c[4]), block(4, c[3]))]
    return AuxNet(backbone, arch, ("block0", "block1", "block2", "block4"), branches, c[4], num_classes)


def _mnv2_group(source: nn.Sequential, inp: int, stride: Optional[int] = None) -> nn.Sequential:
    """A fresh copy of a MobileNetV2 block group, taking `inp` channels (and another first stride)."""
    first = source[0].conv
    expansion, oup = first[0].out_channels // first[0].in_channels, first[-1].num_features
    layers = []
    for s in [stride or first[3].stride[0]] + [1] * (len(source) - 1):
        layers.append(InvertedResidual(inp, oup, s, expansion))
        inp = oup
    return nn.Sequential(*layers)


def mobilenetv2_aux(backbone: MobileNetV2, arch: str, num_classes: int) -> AuxNet:
    """4 heads, on block groups 1, 2, 4 and 6: copies of the later groups, the last head re-running groups 5
    and 6 with stride 1, then each its own 1x1 conv to the last width."""
    groups = backbone.blocks
    out = [g[-1].conv[-1].num_features for g in groups]
    last = backbone.last_channel

    def head(*parts: nn.Module) -> nn.Sequential:
        return nn.Sequential(*parts, conv_1x1_bn(out[6], last))

    branches = [head(*(_mnv2_group(groups[g], out[g - 1]) for g in range(2, 7))),
                head(*(_mnv2_group(groups[g], out[g - 1]) for g in range(3, 7))),
                head(_mnv2_group(groups[5], out[4]), _mnv2_group(groups[6], out[5])),
                head(_mnv2_group(groups[5], out[6], stride=1), _mnv2_group(groups[6], out[5]))]
    return AuxNet(backbone, arch, ("blocks.1", "blocks.2", "blocks.4", "blocks.6"), branches, last, num_classes)


def _four_layer_heads(backbone: nn.Module, arch: str, num_classes: int, stage, e: int, n: list[int]) -> AuxNet:
    """The heads of a 4-layer ResNet (64-512 planes, expansion e, n blocks per layer), from its `stage` builder."""
    branches = [nn.Sequential(stage(64 * e, 128, n[1], 2), stage(128 * e, 256, n[2], 2), stage(256 * e, 512, n[3], 2)),
                nn.Sequential(stage(128 * e, 256, n[2], 2), stage(256 * e, 512, n[3], 2)),
                nn.Sequential(stage(256 * e, 512, n[3], 2)),
                nn.Sequential(stage(512 * e, 512, n[3], 1))]
    return AuxNet(backbone, arch, ("layer1", "layer2", "layer3", "layer4"), branches, 512 * e, num_classes)


def resnetv2_aux(backbone: ResNetV2, arch: str, num_classes: int) -> AuxNet:
    """4 heads, on layers 1-4 (ResNet18/34/50 for CIFAR): copies of the later layers; the last head one extra
    layer of stride 1."""
    block = type(backbone.layer1[0])
    e, n = block.expansion, [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)]

    def stage(inp: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        builder = ResNetV2.__new__(ResNetV2)  # only its _make_layer, which reads and sets `in_planes`
        builder.in_planes = inp
        return ResNetV2._make_layer(builder, block, planes, blocks, stride)

    return _four_layer_heads(backbone, arch, num_classes, stage, e, n)


def _shufflev1_stage(inp: int, out: int, blocks: int, groups: int, downsample: bool = True) -> nn.Sequential:
    layers = []
    for i in range(blocks):
        first = i == 0 and downsample  # a downsampling block concatenates its pooled input
        layers.append(V1Bottleneck(inp, out - (inp if first else 0), stride=2 if first else 1, groups=groups))
        inp = out
    return nn.Sequential(*layers)


def shufflev1_aux(backbone: ShuffleNetV1, arch: str, num_classes: int) -> AuxNet:
    """3 heads, on layers 1-3: copies of the later layers; the last head one more layer 3 at stride 1."""
    groups = backbone.layer1[0].conv3.groups
    widths = [backbone.layer1[0].bn3.num_features + backbone.layer1[0].conv1.in_channels,
              *(getattr(backbone, f"layer{i}")[-1].bn3.num_features for i in (2, 3))]
    n2, n3 = len(backbone.layer2), len(backbone.layer3)
    branches = [nn.Sequential(_shufflev1_stage(widths[0], widths[1], n2, groups),
                              _shufflev1_stage(widths[1], widths[2], n3, groups)),
                nn.Sequential(_shufflev1_stage(widths[1], widths[2], n3, groups)),
                nn.Sequential(_shufflev1_stage(widths[2], widths[2], n3, groups, downsample=False))]
    return AuxNet(backbone, arch, ("layer1", "layer2", "layer3"), branches, widths[2], num_classes)


def shufflev2_aux(backbone: ShuffleNetV2, arch: str, num_classes: int) -> AuxNet:
    """3 heads, on layers 1-3: copies of the later layers and of the final 1x1 conv + BN + ReLU; the last head
    one more layer 3 at stride 1."""
    c = [getattr(backbone, f"layer{i}")[0].bn2.num_features * 2 for i in (1, 2, 3)] + [backbone.bn2.num_features]
    n2, n3 = len(backbone.layer2) - 1, len(backbone.layer3) - 1

    def stage(inp: int, out: int, blocks: int, stride: int = 2) -> list[nn.Module]:
        return [DownBlock(inp, out, stride), *(V2Block(out) for _ in range(blocks))]

    def last() -> list[nn.Module]:
        return [nn.Conv2d(c[2], c[3], kernel_size=1, bias=False), nn.BatchNorm2d(c[3]), nn.ReLU(inplace=True)]

    branches = [nn.Sequential(*stage(c[0], c[1], n2), *stage(c[1], c[2], n3), *last()),
                nn.Sequential(*stage(c[1], c[2], n3), *last()),
                nn.Sequential(*stage(c[2], c[2], n3, stride=1), *last())]
    return AuxNet(backbone, arch, ("layer1", "layer2", "layer3"), branches, c[3], num_classes)


def torchvision_resnet_aux(backbone: nn.Module, arch: str, num_classes: int) -> AuxNet:
    """4 heads on layers 1-4 of a torchvision ResNet (HSAKD's ImageNet models): copies of the later layers made
    by torchvision's own layer builder; the last head one extra layer 4 at stride 1."""
    from types import SimpleNamespace

    from torchvision.models.resnet import ResNet

    e = backbone.layer1[0].expansion
    n = [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)]
    block = type(backbone.layer1[0])

    def stage(inp: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        builder = SimpleNamespace(inplanes=inp, dilation=1, groups=backbone.groups, base_width=backbone.base_width,
                                  _norm_layer=nn.BatchNorm2d)
        return ResNet._make_layer(builder, block, planes, blocks, stride)

    return _four_layer_heads(backbone, arch, num_classes, stage, e, n)
