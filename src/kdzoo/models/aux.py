"""`<arch>_aux` models (HSAKD): the registry entries that wrap each plain zoo arch, and `tv:<resnet>_aux`.
The network is `aux_net.AuxNet`; the heads of each family are built in `aux_heads`."""
from __future__ import annotations

from typing import Callable

from torch import nn

from kdzoo.errors import KdzooError
from kdzoo.models.aux_heads import (
    mobilenetv2_aux,
    resnet_aux,
    resnetv2_aux,
    shufflev1_aux,
    shufflev2_aux,
    torchvision_resnet_aux,
    vgg_aux,
    wrn_aux,
)
from kdzoo.models.aux_net import AuxNet, RotatedHeads, class_logits
from kdzoo.models.mobilenetv2 import MobileNetV2
from kdzoo.models.registry import MODELS, register_model, register_resolver
from kdzoo.models.resnet import CifarResNet
from kdzoo.models.resnetv2 import ResNetV2
from kdzoo.models.shufflenetv1 import ShuffleNetV1
from kdzoo.models.shufflenetv2 import ShuffleNetV2
from kdzoo.models.vgg import VGG
from kdzoo.models.wrn import WideResNet

__all__ = ["AUX_ARCHS", "AuxNet", "RotatedHeads", "class_logits", "create_aux"]

AUX_BUILDERS: dict[type, Callable[[nn.Module, str, int], AuxNet]] = {
    ShuffleNetV2: shufflev2_aux,
    ShuffleNetV1: shufflev1_aux,
    CifarResNet: resnet_aux, WideResNet: wrn_aux, VGG: vgg_aux, MobileNetV2: mobilenetv2_aux, ResNetV2: resnetv2_aux}
AUX_ARCHS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
             "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
             "MobileNetV2", "MobileNetV2_hsakd", "ResNet18", "ResNet34", "ResNet50", "ShuffleV1", "ShuffleV2",
             "ShuffleV2_1_5")


def _register(arch: str) -> None:
    plain = MODELS.get(arch)

    def build(num_classes: int, in_channels: int = 3) -> AuxNet:
        backbone = plain(num_classes=num_classes, in_channels=in_channels)
        backbone.kdzoo_arch = arch
        return AUX_BUILDERS[type(backbone)](backbone, arch, num_classes)

    heads = 4 if arch.startswith(("vgg", "MobileNetV2", "ResNet")) else 3
    register_model(f"{arch}_aux", f"{arch} + {heads} self-supervised rotation heads (HSAKD)")(build)


for _arch in AUX_ARCHS:
    _register(_arch)


TORCHVISION_AUX = ("tv:resnet18", "tv:resnet34", "tv:resnet50")


def create_aux(name: str, num_classes: int, in_channels: int = 3) -> AuxNet:
    """`tv:<resnet>_aux`: a torchvision ResNet with HSAKD's heads."""
    from kdzoo.models.external import create_external

    plain = name[: -len("_aux")]
    if plain not in TORCHVISION_AUX:
        raise KdzooError(f"model {name!r}: _aux heads exist for {', '.join(TORCHVISION_AUX)} among torchvision "
                         "models")
    backbone = create_external(plain, num_classes=num_classes, in_channels=in_channels)
    backbone.kdzoo_arch = plain
    return torchvision_resnet_aux(backbone, plain, num_classes)


register_resolver(lambda name: name.startswith("tv:") and name.endswith("_aux"), create_aux)  # before tv:
