"""Self-supervised auxiliary heads (HSAKD, Yang et al. 2021): `<arch>_aux` = the plain zoo model plus one head
per backbone stage that predicts the joint (class, rotation) label, 4 * classes logits.

Head i takes stage i's output through fresh copies of the later stages (stage 1 -> copies of stages 2 and 3,
stage 2 -> a copy of stage 3), the last stage through one extra stage of stride 1, then global pooling and a
Linear(C_last, 4 * classes); pre-activation networks (WRN) add the final BN + ReLU per head. 3 heads for
ResNet/WRN, 4 for VGG (on blocks 0, 1, 2, 4). HSAKD never calls its VGG heads' init; here every head gets it. The layout and
parameter count are HSAKD's. `forward(x)` is the backbone's (so an `_aux` checkpoint evaluates and deploys as the
plain arch); `head_logits(stage_outputs)` runs the heads on the stage outputs that `aux_inputs()` names.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from kdzoo.models.features import FeatureSpec, feature_spec
from kdzoo.models.registry import register_model
from kdzoo.models.resnet import BasicBlock as ResBlock
from kdzoo.models.resnet import CifarResNet
from kdzoo.models.vgg import VGG, _make_block
from kdzoo.models.wrn import NetworkBlock, WideResNet


class AuxNet(nn.Module):
    def __init__(self, backbone: nn.Module, plain_arch: str, inputs: tuple[str, ...], branches: list[nn.Module],
                 width: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.plain_arch = plain_arch
        self._inputs = tuple(f"backbone.{name}" for name in inputs)
        self.branches = nn.ModuleList(branches)
        self.fcs = nn.ModuleList(nn.Linear(width, 4 * num_classes) for _ in branches)
        for module in [*self.branches.modules(), *self.fcs]:  # HSAKD's head init (fan-out normal, zero biases)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    @property
    def num_heads(self) -> int:
        return len(self.branches)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def aux_inputs(self) -> tuple[str, ...]:
        """The modules whose outputs feed the heads, shallow to deep."""
        return self._inputs

    def head_logits(self, stage_outputs: list[Tensor]) -> list[Tensor]:
        return [fc(branch(f).mean(dim=(2, 3))) for branch, fc, f in zip(self.branches, self.fcs, stage_outputs)]

    def forward_with_heads(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Backbone logits and every head's joint logits of one forward."""
        kept: list[Tensor] = []
        handles = [self.get_submodule(n).register_forward_hook(lambda m, i, o: kept.append(o)) for n in self._inputs]
        try:
            logits = self.backbone(x)
        finally:
            for handle in handles:
                handle.remove()
        return logits, self.head_logits(kept)

    def feature_spec(self) -> FeatureSpec:
        spec = feature_spec(self.backbone)
        prefix = lambda name: None if name is None else f"backbone.{name}"  # noqa: E731
        return FeatureSpec(stages=tuple(map(prefix, spec.stages)), head=prefix(spec.head),
                           preact=tuple(map(prefix, spec.preact)))


def class_logits(joint: Tensor) -> Tensor:
    """Joint (class, rotation) logits [N, 4C] -> class logits [N, C]: the 4 rotations of each class summed
    (joint label = 4 * class + rotation)."""
    return joint.reshape(joint.shape[0], -1, 4).sum(dim=-1)


class RotatedHeads(nn.Module):
    """Evaluation view of an AuxNet (HSAKD's test): each image under its 4 rotations through the heads;
    {"head<i>": class logits} over the 4B rows (rotation logits summed per class), image-major."""

    def __init__(self, net: AuxNet):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        rotated = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1).flatten(0, 1)
        _, heads = self.net.forward_with_heads(rotated)
        return {f"head{i + 1}": class_logits(h) for i, h in enumerate(heads)}


# Head builders: the backbone's own stage constructors, with fresh parameters ----------------------------------
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
    block = lambda i, c_in: _make_block(cfg[i], c_in)  # noqa: E731
    pool = lambda: nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)  # noqa: E731
    c = [widths[-1] for widths in cfg]
    branches = [nn.Sequential(pool(), block(1, c[0]), pool(), block(2, c[1]), pool(), block(3, c[2]), block(4, c[3])),
                nn.Sequential(pool(), block(2, c[1]), pool(), block(3, c[2]), block(4, c[3])),
                nn.Sequential(pool(), block(3, c[2]), block(4, c[3])),
                nn.Sequential(block(3, c[4]), block(4, c[3]))]
    return AuxNet(backbone, arch, ("block0", "block1", "block2", "block4"), branches, c[4], num_classes)


AUX_BUILDERS: dict[type, Callable[[nn.Module, str, int], AuxNet]] = {CifarResNet: resnet_aux, WideResNet: wrn_aux,
                                                                     VGG: vgg_aux}
AUX_ARCHS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
             "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19")


def _register(arch: str) -> None:
    from kdzoo.models.registry import MODELS

    plain = MODELS.get(arch)

    def build(num_classes: int, in_channels: int = 3) -> AuxNet:
        backbone = plain(num_classes=num_classes, in_channels=in_channels)
        backbone.kdzoo_arch = arch
        return AUX_BUILDERS[type(backbone)](backbone, arch, num_classes)

    heads = 4 if arch.startswith("vgg") else 3
    register_model(f"{arch}_aux", f"{arch} + {heads} self-supervised rotation heads (HSAKD)")(build)


for _arch in AUX_ARCHS:
    _register(_arch)


