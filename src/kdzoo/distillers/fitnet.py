"""FitNet: a middle stage map of the student, through a convolutional regressor, regresses the teacher's (MSE)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.features import Needs


class ConvReg(nn.Module):
    """Maps a student map (B, s_C, s_H, s_W) to the teacher's (B, t_C, t_H, t_W): conv + BN (+ ReLU).

    RepDistiller's rule (models/util.py): a 3x3 stride-2 conv when the student map is twice the teacher's size, a
    4x4 stride-2 transposed conv when it is half, a (1+s_H-t_H)x(1+s_W-t_W) conv when it is at least as large.
    Where that rule errors (student smaller than the teacher but not exactly half, e.g. 1x1 -> 4x4 on 8x8 inputs,
    or 4x4 -> 7x7 on 28x28 inputs) the student map is bilinearly resized to the teacher's size before a 1x1 conv.
    """

    def __init__(self, s_shape, t_shape, use_relu: bool = True):
        super().__init__()
        s_c, s_h, s_w = (int(v) for v in s_shape[1:])
        t_c, t_h, t_w = (int(v) for v in t_shape[1:])
        self.resize: tuple[int, int] | None = None
        if s_h == 2 * t_h and s_w == 2 * t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h and 2 * s_w == t_w:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            self.resize = (t_h, t_w)
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=1)
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True) if use_relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.resize is not None:
            x = F.interpolate(x, size=self.resize, mode="bilinear", align_corners=False)
        return self.relu(self.bn(self.conv(x)))


def hint_loss(regressed: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over every element (RepDistiller's HintLoss = nn.MSELoss())."""
    return F.mse_loss(regressed.float(), target.float())


@dataclass
class FitNetParams:
    hint_layer: int = 2  # index into the stage maps (RepDistiller --hint_layer: feat[2]; stages[0] is the stem)


@register_method
class FitNet(Method):
    name = "fitnet"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "FitNet hints: a regressed student stage map matches the teacher's by MSE"
    paper = "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015"
    student_needs = Needs(stages=True)
    teacher_needs = Needs(stages=True)
    Params = FitNetParams
    recipes = Recipes(loss={"ce": 1.0, "fitnet": 100.0})

    def __init__(self, params: FitNetParams, ctx):
        super().__init__(params, ctx)
        s_stages, t_stages = ctx.student_shapes.stages, ctx.teacher_shapes.stages
        if not s_stages or not t_stages:
            raise IncompatiblePairError("fitnet: both networks need named stage maps")
        layer = params.hint_layer
        n = min(len(s_stages), len(t_stages))
        if not -n <= layer < n:
            raise IncompatiblePairError(f"fitnet: hint_layer {layer} out of range: the student has {len(s_stages)} "
                                        f"stage maps, the teacher {len(t_stages)}")
        self.layer = layer
        self.regressor = ConvReg(s_stages[layer], t_stages[layer])

    def losses(self, batch, s, t, step):
        return {"fitnet": hint_loss(self.regressor(s.stages[self.layer]), t.stages[self.layer])}
