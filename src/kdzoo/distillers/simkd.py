"""SimKD: knowledge distillation with the reused teacher classifier (Chen et al., CVPR 2022).

The student's last stage map (RepDistiller's feat[-2]) goes through a bottleneck projector to the teacher's channel
count, after the larger of the two maps is average-pooled to the smaller one's spatial size:

    P = ReLU(BN(conv1x1_{C_t/f -> C_t}(ReLU(BN(conv3x3(ReLU(BN(conv1x1_{C_s -> C_t/f}(x)))))))))
    L_simkd = mean((P(pool(f_s)) - pool(f_t))^2)

and the student's predictions are the FROZEN teacher classifier applied to the globally average-pooled P, at train
and at test time. So the deployable network is the student body + projector + teacher head: `inference_wrapper`
returns `SimKDStudent`, whose state_dict (student, projector, copy of the teacher head) is what a run saves, and
`rebuild_inference` rebuilds it from the checkpoint metadata.

Follows DefangChen/SimKD (models/util.py SimKD, helper/loops.py): convs without bias, the middle conv a full 3x3
(the depthwise variant is commented out there), factor f = 2, nn.MSELoss (mean over all elements), CE and KD
weights 0 (recipe {simkd: 1}).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import FrozenRef, Method, Recipes
from kdzoo.distillers.common import match_spatial
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.features import (
    FeatureModel,
    FeatureSpec,
    Needs,
    feature_spec,
    get_head,
)


class SimKDProjector(nn.Sequential):
    """1x1 conv -> C_t/f, BN, ReLU, 3x3 conv, BN, ReLU, 1x1 conv -> C_t, BN, ReLU (convs without bias)."""

    def __init__(self, s_channels: int, t_channels: int, factor: int = 2):
        mid = t_channels // factor
        super().__init__(
            nn.Conv2d(s_channels, mid, kernel_size=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, t_channels, kernel_size=1, bias=False), nn.BatchNorm2d(t_channels),
            nn.ReLU(inplace=True),
        )


class SimKDStudent(nn.Module):
    """The deployable SimKD student: forward(x) = teacher_head(avgpool(projector(pool(student stages[-1]))))."""

    def __init__(self, student: nn.Module, projector: nn.Module, head: nn.Module, t_size: tuple[int, int]):
        super().__init__()
        self.student = student
        self.projector = projector
        self.head = head
        self.t_size = tuple(int(v) for v in t_size)
        spec = feature_spec(student)
        # Only the last stage is tapped. Kept out of _modules: its only state is `student`, registered above.
        object.__setattr__(self, "_tap", FeatureModel(student, Needs(stages=True),
                                                      FeatureSpec(stages=(spec.stages[-1],), head=spec.head)))

    def feature_spec(self) -> FeatureSpec:
        """The student's stages, then the projected map; the pooled embedding is the reused head's input."""
        inner = feature_spec(self.student)
        return FeatureSpec(stages=tuple(f"student.{name}" for name in inner.stages) + ("projector",), head="head")

    def features(self, x: Tensor) -> Tensor:
        """The projected map (B, C_t, h, w)."""
        f = self._tap(x).stages[0]
        if f.shape[-1] > self.t_size[-1]:  # as match_spatial: pool only when the student map is larger
            f = F.adaptive_avg_pool2d(f, self.t_size)
        return self.projector(f)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def simkd_loss(projected: Tensor, teacher_map: Tensor) -> Tensor:
    """L_simkd = mean((P(pool(f_s)) - pool(f_t))^2): nn.MSELoss (mean over every element) between the projected
    student map and the teacher's map of the same shape, in fp32 (DefangChen/SimKD helper/loops.py)."""
    return F.mse_loss(projected.float(), teacher_map.float())


@dataclass
class SimKDParams:
    factor: int = 2  # bottleneck reduction of the projector: mid channels C_t // factor


@register_method
class SimKD(Method):
    name = "simkd"
    reference = "DefangChen/SimKD"  # the code its tests compare against
    description = "SimKD: project the last student stage onto the teacher's; reuse the frozen teacher classifier"
    paper = "Chen et al., Knowledge Distillation with the Reused Teacher Classifier, CVPR 2022"
    student_needs = Needs(stages=True)
    teacher_needs = Needs(stages=True)
    Params = SimKDParams
    # DefangChen/SimKD scripts/run_distill.sh: --distill simkd -c 0 -d 0 -b 1 (no CE, no KD)
    recipes = Recipes(loss={"simkd": 1.0})

    def __init__(self, params: SimKDParams, ctx):
        super().__init__(params, ctx)
        if ctx.teacher is None or ctx.teacher_shapes is None:
            raise IncompatiblePairError("simkd: needs a teacher")
        if not ctx.student_shapes.stages or not ctx.teacher_shapes.stages:
            raise IncompatiblePairError("simkd: both networks need stage features")
        s_shape, t_shape = ctx.student_shapes.stages[-1], ctx.teacher_shapes.stages[-1]
        if params.factor < 1 or t_shape[1] // params.factor < 1:
            raise IncompatiblePairError(f"simkd: factor {params.factor} leaves no channels of the teacher's "
                                        f"{t_shape[1]}")
        head = get_head(ctx.teacher)
        if not isinstance(head, nn.Linear) or head.in_features != t_shape[1]:
            raise IncompatiblePairError(
                f"simkd: the teacher head must be an nn.Linear on the {t_shape[1]} channels of its last stage "
                f"(got {type(head).__name__} with in_features {getattr(head, 'in_features', '?')})")
        self.s_channels, self.t_channels = int(s_shape[1]), int(t_shape[1])
        self.t_size = (int(t_shape[2]), int(t_shape[3]))
        self.projector = SimKDProjector(self.s_channels, self.t_channels, params.factor)
        self.teacher_head = FrozenRef(head)  # the live frozen teacher head: no grads, not in the state_dict
        self._wrapper: list[SimKDStudent] = []  # cached deployable wrapper (a list: not a submodule)

    def project(self, s_map: Tensor, t_map: Tensor) -> tuple[Tensor, Tensor]:
        """Projected student map and the (spatially matched) teacher target."""
        source, target = match_spatial(s_map, t_map)
        return self.projector(source), target

    def logits(self, projected: Tensor) -> Tensor:
        """The reused teacher classifier on the pooled projected map (the SimKD student's prediction)."""
        return self.teacher_head(projected.mean(dim=(2, 3)))

    def losses(self, batch, s, t, step):
        projected, target = self.project(s.stages[-1], t.stages[-1])
        return {"simkd": simkd_loss(projected, target)}

    # Deployment ----------------------------------------------------------------------------------------------
    def inference_wrapper(self, student: nn.Module) -> SimKDStudent:
        if not self._wrapper or self._wrapper[0].student is not student:
            head = copy.deepcopy(self.teacher_head.module)  # frozen: a copy made once stays in sync
            for p in head.parameters():
                p.requires_grad_(False)
            self._wrapper[:] = [SimKDStudent(student, self.projector, head, self.t_size)]
        return self._wrapper[0]

    def inference_meta(self) -> dict[str, Any]:
        head = self.teacher_head.module
        return {"s_channels": self.s_channels, "t_channels": self.t_channels, "t_size": list(self.t_size),
                "factor": self.params.factor, "head_in": head.in_features, "head_out": head.out_features,
                "head_bias": head.bias is not None}

    @classmethod
    def rebuild_inference(cls, student: nn.Module, meta: dict[str, Any]) -> nn.Module:
        projector = SimKDProjector(meta["s_channels"], meta["t_channels"], meta["factor"])
        head = nn.Linear(meta["head_in"], meta["head_out"], bias=meta.get("head_bias", True))
        return SimKDStudent(student, projector, head, tuple(meta["t_size"]))
