"""VID, variational information distillation: the teacher's stage maps under a Gaussian predicted from the student's.

For every stage pair (stages[1:] of both networks, zipped to the shorter list) a regressor (1x1 conv, ReLU,
1x1 conv, ReLU, 1x1 conv; no biases; mid width = the teacher's channels, as RepDistiller) predicts the mean
mu(f_s) of the teacher map, and a learned per-channel variance sigma^2_c = softplus(log_scale_c) + eps
(initialised to `init_pred_var`) its spread. The term is the Gaussian negative log-likelihood without its
constant, averaged over batch, channels and pixels, and summed over pairs:

    vid = sum_pairs mean_{b,c,h,w} 0.5 * ((mu - f_t)^2 / sigma^2_c + log sigma^2_c)

When the maps differ in size, the larger one is average-pooled to the smaller (the student map before the
regressor), as RepDistiller's distiller_zoo/VID.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.common import match_spatial
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError
from kdzoo.models.features import Needs


@dataclass
class VIDParams:
    init_pred_var: float = 5.0  # initial predicted variance sigma^2 of every channel
    eps: float = 1e-5  # floor added to softplus(log_scale)


def gaussian_nll(mean: Tensor, target: Tensor, log_scale: Tensor, eps: float) -> Tensor:
    """mean over (B, C, H, W) of 0.5 * ((mean - target)^2 / var_c + log var_c), var = softplus(log_scale) + eps.

    Computed as 0.5 * (sum_c S_c / var_c / numel + mean_c log var_c) with S_c the per-channel sum of squared
    errors: the same value and gradients, with a third of the full-size elementwise work of the direct form.
    """
    var = F.softplus(log_scale.float()) + eps
    diff = mean.float() - target.float()
    per_channel = diff.pow(2).sum(dim=(0, 2, 3))
    return 0.5 * ((per_channel / var).sum() / diff.numel() + var.log().mean())


class VIDRegressor(nn.Module):
    """The mean regressor and per-channel variance of one stage pair."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, init_pred_var: float, eps: float):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(c_in, c_mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_mid, c_mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_mid, c_out, 1, bias=False),
        )
        # softplus(log_scale) + eps == init_pred_var at the start
        self.log_scale = nn.Parameter(torch.full((c_out,), math.log(math.expm1(init_pred_var - eps))))


@register_method
class VID(Method):
    name = "vid"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "VID: Gaussian likelihood of the teacher's stage maps under a regressor of the student's"
    paper = "Ahn et al., Variational Information Distillation for Knowledge Transfer, CVPR 2019"
    student_needs = Needs(stages=True)
    teacher_needs = Needs(stages=True)
    Params = VIDParams
    recipes = Recipes(loss={"ce": 1.0, "vid": 1.0})

    def __init__(self, params: VIDParams, ctx):
        super().__init__(params, ctx)
        if params.init_pred_var <= params.eps:
            raise ConfigError(f"methods.vid.init_pred_var: must exceed eps ({params.eps}), got "
                              f"{params.init_pred_var}")
        pairs = list(zip(ctx.student_shapes.stages[1:], ctx.teacher_shapes.stages[1:]))
        self.pairs = nn.ModuleList(
            VIDRegressor(s[1], t[1], t[1], params.init_pred_var, params.eps) for s, t in pairs)

    def losses(self, batch, s, t, step):
        total = None
        for f_s, f_t, pair in zip(s.stages[1:], t.stages[1:], self.pairs):
            f_s, f_t = match_spatial(f_s, f_t)
            loss = gaussian_nll(pair.regressor(f_s), f_t, pair.log_scale, self.params.eps)
            total = loss if total is None else total + loss
        return {"vid": total}
