"""Self-supervised auxiliary heads (HSAKD, Yang et al. 2021): `<arch>_aux` = the plain zoo model plus one head per
backbone stage that predicts the joint (class, rotation) label, 4 * classes logits.

Head i takes stage i's output through fresh copies of the later stages (stage 1 -> copies of stages 2 and 3, stage
2 -> a copy of stage 3), the last stage through one extra stage of stride 1, then global pooling and a
Linear(C_last, 4 * classes); pre-activation networks (WRN) add the final BN + ReLU per head. 3 heads for
ResNet/WRN/ShuffleNets, 4 for VGG, MobileNetV2 and ResNet18/34/50. HSAKD never calls its VGG heads' init; here
every head gets it. The layout and parameter count are HSAKD's. `forward(x)` is the backbone's (so an `_aux`
checkpoint evaluates and deploys as the plain arch); `head_logits(stage_outputs)` runs the heads on the stage
outputs that `aux_inputs()` names.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from kdzoo.errors import KdzooError
from kdzoo.models.features import FeatureSpec, feature_spec


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
        if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
            raise KdzooError(f"rotation heads need square image batches, got shape {tuple(x.shape)}")
        rotated = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1).flatten(0, 1)
        _, heads = self.net.forward_with_heads(rotated)
        return {f"head{i + 1}": class_logits(h) for i, h in enumerate(heads)}
