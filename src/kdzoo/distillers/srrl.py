"""SRRL: softmax regression representation learning (Yang et al., ICLR 2021).

The student's pooled feature, seen as a Cx1x1 map, goes through a 1x1 conv + BN + ReLU connector to the
teacher's pooled width (h). Two MSE terms: h against the teacher's pooled feature, and the FROZEN teacher
classifier applied to h against the teacher's logits:

    L_srrl = mean((h - f_t)^2) + mean((W_t h + b_t - z_t)^2)

Follows DefangChen/SimKD (models/util.py SRRL, helper/loops.py): both terms are nn.MSELoss with mean reduction and
are added with weight 1; the connector's conv has no bias. The teacher head is held by `FrozenRef`: it is neither a
parameter of the method (not optimised, not saved) nor does it receive gradients, but the gradient of the second
term flows through it into the connector and the student.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import FrozenRef, Method, NoParams, Recipes
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.features import Needs, get_head


def srrl_loss(h: Tensor, teacher_pooled: Tensor, h_through_teacher_head: Tensor, teacher_logits: Tensor) -> Tensor:
    """L_srrl = mean((h - f_t)^2) + mean((W_t h + b_t - z_t)^2): the connector output h against the teacher's pooled
    feature, and h through the frozen teacher classifier against the teacher's logits; both nn.MSELoss with mean
    reduction, fp32, weight 1 (DefangChen/SimKD helper/loops.py)."""
    return F.mse_loss(h.float(), teacher_pooled.float()) + F.mse_loss(h_through_teacher_head.float(),
                                                                      teacher_logits.float())

class SRRLConnector(nn.Module):
    """1x1 conv (no bias) + BN + ReLU from the student's pooled width to the teacher's, on Cx1x1 maps."""

    def __init__(self, s_dim: int, t_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(s_dim, t_dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(t_dim)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, pooled):
        x = pooled.reshape(pooled.shape[0], -1, 1, 1)
        return self.relu(self.bn(self.conv(x))).flatten(1)


@register_method
class SRRL(Method):
    name = "srrl"
    reference = "jingyang2017/SRRL"  # the code its tests compare against
    description = "SRRL: connector to the teacher's pooled width; feature MSE + MSE through the teacher head"
    paper = "Yang et al., Knowledge Distillation via Softmax Regression Representation Learning, ICLR 2021"
    student_needs = Needs(pooled=True)
    teacher_needs = Needs(pooled=True, logits=True)
    Params = NoParams
    # DefangChen/SimKD scripts/run_distill.sh: --distill srrl -c 1 -d 1 -b 1 (CE 1, KD 1 at T=4, SRRL 1)
    recipes = Recipes(loss={"ce": 1.0, "kd": 1.0, "srrl": 1.0})

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        if ctx.teacher is None or ctx.teacher_shapes is None:
            raise IncompatiblePairError("srrl: needs a teacher")
        s_dim, t_dim = ctx.student_shapes.pooled[1], ctx.teacher_shapes.pooled[1]
        head = get_head(ctx.teacher)
        if getattr(head, "in_features", t_dim) != t_dim:
            raise IncompatiblePairError(f"srrl: the teacher head takes {head.in_features} features but the "
                                        f"teacher's pooled feature has {t_dim}")
        self.connector = SRRLConnector(s_dim, t_dim)
        self.teacher_head = FrozenRef(head)  # not registered: stays out of the optimizer and the state_dict

    def losses(self, batch, s, t, step):
        h = self.connector(s.pooled)
        pred = self.teacher_head(h)  # gradient flows through the frozen head (its weights need no grad)
        return {"srrl": srrl_loss(h, t.pooled, pred, t.logits)}
