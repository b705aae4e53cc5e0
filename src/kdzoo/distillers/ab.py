"""AB, activation boundaries: a pre-training stage teaches the student's neurons where the teacher's switch on.

The student's pre-activation stage maps (stages[1:], before their last ReLU) pass through a connector to the
teacher's shape: nothing where channels and size already agree, else a conv + BN (1x1 at equal size; 3x3
stride 2 when the student map is twice the teacher's; a transposed 4x4 stride 2 when it is half; a valid
conv of size 1 + s - t when larger otherwise), as RepDistiller's Connector/ConvReg(use_relu=False). With
margin m, connector output s and teacher pre-activation t, the alternative L2 loss of one pair is

    L_i = sum_{b,c,h,w} (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0]

and the term is  ab = sum_i 2^(i - n + 1) * L_i / B * 3 / 1000  (n pairs; the deepest weighs 1), as
RepDistiller's distiller_zoo/AB.py. It acts only in the init stage (`init_epochs`, default 30), which trains
the connectors and the student's body (every module but the classifier) on this term alone; the main stage
then trains the student with the recipe's other terms (CE in the published runs).

Beyond the original: stage lists of different length are zipped to the shorter one (RepDistiller asserts
equal length), and a student map smaller than the teacher's by other than 2x (e.g. 4x4 against 7x7 on 28x28
inputs) gets a transposed conv of stride t // s and kernel t - (s - 1) * stride instead of an error.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import InitStage, Method, Recipes
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.features import Needs, student_body


@dataclass
class ABParams:
    margin: float = 1.0  # m of the alternative L2 loss
    init_epochs: int = 30  # epochs of the init stage (the only stage AB acts in)


def _upsampler(s: int, t: int) -> tuple[int, int, int]:
    """(kernel, stride, padding) of a transposed conv taking size s to t > s."""
    if t == 2 * s:
        return 4, 2, 1  # RepDistiller's ConvReg
    stride = t // s
    return t - (s - 1) * stride, stride, 0


def connector(s_shape, t_shape) -> nn.Module:
    """A module taking a student map of `s_shape` to the teacher's `t_shape` (B, C, H, W)."""
    _, s_c, s_h, s_w = s_shape
    _, t_c, t_h, t_w = t_shape
    if s_c == t_c and s_h == t_h and s_w == t_w:
        return nn.Identity()
    if s_h == 2 * t_h and s_w == 2 * t_w:
        conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif s_h >= t_h and s_w >= t_w:
        conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    elif s_h < t_h and s_w < t_w:
        (kh, sh, ph), (kw, sw, pw) = _upsampler(s_h, t_h), _upsampler(s_w, t_w)
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw))
    else:
        raise IncompatiblePairError(f"ab: cannot connect a student map of {s_h}x{s_w} to a teacher map of "
                                    f"{t_h}x{t_w}")
    return nn.Sequential(conv, nn.BatchNorm2d(t_c))


def ab_loss(sources: list[Tensor], targets: list[Tensor], margin: float) -> Tensor:
    """RepDistiller's AB term: layer-weighted alternative L2 over the pairs, / batch size * 3 / 1000.

    (s + m)^2 [s > -m, t <= 0] + (s - m)^2 [s <= m, t > 0] is computed as relu(m + s * sign)^2 with sign = +1
    where the teacher is off (t <= 0) and -1 where it is on: the same values and gradients, fewer passes.
    """
    n = len(sources)
    total = None
    for i, (s, t) in enumerate(zip(sources, targets)):
        sign = 1.0 - 2.0 * (t > 0).float()
        loss = F.relu(s.float() * sign + margin).pow(2).sum() * (2.0 ** (i - n + 1))
        total = loss if total is None else total + loss
    return total / sources[0].shape[0] * 3 / 1000


@register_method
class AB(Method):
    name = "ab"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "AB: activation boundaries of the teacher's pre-activations, taught in an init stage"
    paper = ("Heo et al., Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons, "
             "AAAI 2019")
    student_needs = Needs(preact=True)
    teacher_needs = Needs(preact=True)
    main_stage = False
    Params = ABParams
    recipes = Recipes(loss={"ce": 1.0, "ab": 1.0})

    def __init__(self, params: ABParams, ctx):
        super().__init__(params, ctx)
        pairs = list(zip(ctx.student_shapes.stages[1:], ctx.teacher_shapes.stages[1:]))
        if not pairs:
            raise IncompatiblePairError("ab: the student or the teacher has no stage maps past the stem")
        self.connectors = nn.ModuleList(connector(s, t) for s, t in pairs)
        self._body = student_body(ctx.student)  # a plain list: the student is not registered here

    def init_stage(self):
        if self.params.init_epochs <= 0:
            return None
        return InitStage(epochs=self.params.init_epochs, modules=[self.connectors, *self._body],
                         weights={"ab": 1.0})

    def init_losses(self, batch, s, t, step):
        sources = [c(f) for c, f in zip(self.connectors, s.preact[1:])]
        return {"ab": ab_loss(sources, t.preact[1:len(sources) + 1], self.params.margin)}

    def losses(self, batch, s, t, step):  # not called by the offline regime (main_stage False)
        return self.init_losses(batch, s, t, step)
