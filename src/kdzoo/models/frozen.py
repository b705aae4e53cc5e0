"""The frozen teacher: no grads, eval mode that survives .train(), forward under inference_mode."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from kdzoo.models.features import FeatureModel, Features, FeatureSpec, Needs


class FrozenTeacher(nn.Module):
    """A teacher that cannot be trained: requires_grad False, always in eval mode, runs under inference_mode.

    Returns ordinary tensors (cloned out of inference mode) so that losses may save them for backward.
    """

    def __init__(self, model: nn.Module, want: Needs, spec: Optional[FeatureSpec] = None):
        super().__init__()
        self.features = FeatureModel(model, want, spec)
        for p in self.features.parameters():
            p.requires_grad_(False)
        super().train(False)

    @property
    def model(self) -> nn.Module:
        return self.features.model

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)  # eval mode survives .train(): BN statistics stay fixed

    def forward(self, x: torch.Tensor) -> Features:
        with torch.inference_mode():
            feats = self.features(x)
        return feats.map(torch.Tensor.clone)
