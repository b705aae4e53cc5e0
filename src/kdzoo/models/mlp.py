"""A multilayer perceptron for vector inputs (tabular data): `in_channels` is the number of features."""
from __future__ import annotations

from torch import Tensor, nn

from kdzoo.models.features import FeatureSpec
from kdzoo.models.registry import register_model


class MLP(nn.Module):
    """Linear -> BatchNorm -> ReLU blocks, then a linear classifier; each block is a feature stage."""

    def __init__(self, in_features: int, num_classes: int, widths: tuple[int, ...] = (256, 256)):
        super().__init__()
        blocks, width = [], in_features
        for out in widths:
            blocks.append(nn.Sequential(nn.Linear(width, out), nn.BatchNorm1d(out), nn.ReLU(inplace=True)))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.blocks(x.flatten(1)))

    def feature_spec(self) -> FeatureSpec:
        n = len(self.blocks)
        return FeatureSpec(stages=tuple(f"blocks.{i}" for i in range(n)), head="fc",
                           preact=tuple(f"blocks.{i}.2" for i in range(n)))


@register_model("mlp", "MLP for vector inputs: 2 hidden layers of 256 (tabular data)")
def mlp(num_classes: int, in_channels: int = 3) -> MLP:
    return MLP(in_channels, num_classes)


@register_model("mlp_small", "MLP for vector inputs: 1 hidden layer of 64")
def mlp_small(num_classes: int, in_channels: int = 3) -> MLP:
    return MLP(in_channels, num_classes, widths=(64,))
