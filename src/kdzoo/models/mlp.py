"""A multilayer perceptron for vector inputs (tabular data): `in_channels` is the number of features."""
from __future__ import annotations

from torch import Tensor, nn

from kdzoo.models.features import FeatureSpec
from kdzoo.models.registry import register_model


class MLP(nn.Module):
    """Linear -> BatchNorm -> ReLU blocks, then a linear classifier; each block is a feature stage."""

    def __init__(self, in_features: int, num_classes: int, widths: tuple[int, ...] = (256, 256),
                 input_dropout: float = 0.0):
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout else nn.Identity()
        blocks, width = [], in_features
        for out in widths:
            blocks.append(nn.Sequential(nn.Linear(width, out), nn.BatchNorm1d(out), nn.ReLU(inplace=True)))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.blocks(self.input_dropout(x.flatten(1))))

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


# DS-SRD's tabular networks (covtype, HIGGS): five linear layers, dropout 0.2 on the input features.
@register_model("mlp5", "MLP, 5 linear layers (hidden 512, 512, 1024, 1024), input dropout 0.2 (tabular teacher)")
def mlp5(num_classes: int, in_channels: int = 3) -> MLP:
    return MLP(in_channels, num_classes, widths=(512, 512, 1024, 1024), input_dropout=0.2)


@register_model("mlp5_small", "MLP, 5 linear layers (hidden 64, 64, 128, 128), input dropout 0.2 (tabular student)")
def mlp5_small(num_classes: int, in_channels: int = 3) -> MLP:
    return MLP(in_channels, num_classes, widths=(64, 64, 128, 128), input_dropout=0.2)
