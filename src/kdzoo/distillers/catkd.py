"""CAT-KD: class attention transfer (Guo et al., Class Attention Transfer Based Knowledge Distillation, CVPR 2023;
GzyAftermath/CAT-KD).

Each network's class activation maps come from its classifier used as a 1x1 conv over the map it pools (its last
stage map): CAM_k = sum_c W_kc f_c, without the bias (the original's `_test` models: conv_test, bias=False, the
teacher's fc weight copied in). Both CAMs are average-pooled to R x R, optionally L2-normalised over the R x R cells
of each class map, and matched by MSE (mean over every element):

    L_CAT = mean((N(pool_R(CAM_s)) - N(pool_R(CAM_t)))^2)

Follows mdistiller/distillers/CAT_KD.py (CAT_loss, _Normalize, IF_BINARIZE) with the CAT_loss_weight as the recipe
weight; CAT-KD = CE + CAT (there is no KD term), `onlyCAT` = a recipe without ce. Defaults: its CIFAR-100
res32x4_res8x4.yaml (weight 15, R 2, IF_NORMALIZE False); `pair_overrides` carries the other configs'.
The original's students have no classifier bias at all; here the student's bias stays in its logits (CE) and is
left out of its CAMs unless `student_bias`. Pairs whose last stage map is not the map the classifier pools (WRN's
final BN + ReLU, ShuffleV2's and MobileNetV2's last 1x1 convs) are refused: their CAMs would be of another map.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import FrozenRef, Method, Recipes
from kdzoo.distillers.common import wide
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError, KdzooError
from kdzoo.models.features import FeatureModel, Needs, get_head

# configs/cifar100/CAT_KD/*.yaml: (CAT_loss_weight, CAM_RESOLUTION, IF_NORMALIZE); CE weight 1 in all; batch 64, 240
# epochs, lr 0.05 (0.01 for ShuffleV1/V2, MobileNetV2), x0.1 at 150/180/210, wd 5e-4: the recipe generator's.
PAIR_SETTINGS = {
    ("resnet32x4", "resnet8x4"): (15.0, 2, False),
    ("resnet56", "resnet20"): (0.7, 2, False),
    ("resnet110", "resnet32"): (1.8, 2, False),
    ("vgg13", "vgg8"): (4.5, 2, False),
    ("wrn_40_2", "wrn_16_2"): (12.0, 2, False),
    ("wrn_40_2", "wrn_40_1"): (1.5, 2, False),
    ("resnet32x4", "ShuffleV1"): (600.0, 4, True),
    ("resnet32x4", "ShuffleV2"): (600.0, 4, True),
    ("wrn_40_2", "ShuffleV1"): (80.0, 4, True),
    ("vgg13", "MobileNetV2"): (15.0, 2, True),
    ("ResNet50", "MobileNetV2"): (40.0, 2, True),
}


def class_activation_maps(feature_map: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """(N, K, H, W): the classifier (K, C) as a 1x1 conv over the (N, C, H, W) map it pools."""
    cams = torch.einsum("nchw,kc->nkhw", wide(feature_map), wide(weight))
    return cams if bias is None else cams + wide(bias).view(1, -1, 1, 1)


def binarize(cams: Tensor) -> Tensor:
    """1 where a CAM cell exceeds its map's mean absolute activation, else 0 (CAT_KD.py IF_BINARIZE)."""
    threshold = cams.abs().mean(dim=(2, 3), keepdim=True)
    return (cams > threshold).to(cams.dtype)


def cat_loss(student_cams: Tensor, teacher_cams: Tensor, resolution: int, normalize: bool) -> Tensor:
    """MSE between the CAMs average-pooled to resolution x resolution, each class map L2-normalised over its cells
    when `normalize` (CAT_KD.py CAT_loss / _Normalize)."""
    s = F.adaptive_avg_pool2d(wide(student_cams), (resolution, resolution))
    t = F.adaptive_avg_pool2d(wide(teacher_cams), (resolution, resolution))
    if normalize:
        s, t = F.normalize(s, dim=(2, 3)), F.normalize(t, dim=(2, 3))
    return F.mse_loss(s, t.to(s.dtype))


def pools_last_stage(model: nn.Module, input_shape) -> Optional[bool]:
    """Whether the model's pooled embedding is the spatial mean of its last stage map (a probe forward of two
    seeded images in eval mode; None where the model has no feature spec)."""
    try:
        tap = FeatureModel(model, Needs(pooled=True, stages=True))
    except KdzooError:
        return None
    device = next(model.parameters()).device
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            f = tap(torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(device))
    finally:
        tap.remove_hooks()
        for m, training in modes:
            m.train(training)
    last, pooled = f.stages[-1].float(), f.pooled.float()
    return last.dim() == 4 and last.shape[1] == pooled.shape[1] and \
        torch.allclose(last.mean(dim=(2, 3)), pooled, rtol=1e-3, atol=1e-4)


@dataclass
class CATKDParams:
    resolution: int = field(default=2, metadata={"gt": 0})  # CAM_RESOLUTION
    normalize: bool = False  # IF_NORMALIZE (its res32x4 -> res8x4 config; the cfg default is True)
    binarize: bool = False  # IF_BINARIZE: the teacher's CAMs as 0/1 maps (the paper's CAT ablation)
    student_bias: bool = False  # add the student classifier's bias to its CAMs (the original's students have none)


@register_method
class CATKD(Method):
    name = "catkd"
    reference = "GzyAftermath/CAT-KD"  # the code its tests compare against
    description = "CAT-KD: pooled class activation maps (classifier as a 1x1 conv) of the student match the teacher's"
    paper = "Guo et al., Class Attention Transfer Based Knowledge Distillation, CVPR 2023"
    student_needs = Needs(stages=True)
    teacher_needs = Needs(stages=True)
    Params = CATKDParams
    # res32x4_res8x4.yaml: CE_WEIGHT 1, CAT_loss_weight 15; recipes for the published pairs whose classifier pools
    # the last stage map (WRN, ShuffleV2 and MobileNetV2 pool another map: refused at setup)
    recipes = Recipes(loss={"ce": 1.0, "catkd": 15.0},
                      pairs=(("resnet32x4", "resnet8x4"), ("resnet56", "resnet20"), ("resnet110", "resnet32"),
                             ("vgg13", "vgg8"), ("resnet32x4", "ShuffleV1")))

    @classmethod
    def pair_overrides(cls, teacher: str, student: str) -> dict:
        settings = PAIR_SETTINGS.get((teacher, student))
        if settings is None:
            return {}
        weight, resolution, normalize = settings
        return {"loss": {"catkd": weight}, "methods": {"catkd": {"resolution": resolution, "normalize": normalize}}}

    def __init__(self, params: CATKDParams, ctx):
        super().__init__(params, ctx)
        if ctx.teacher is None or ctx.teacher_shapes is None:
            raise IncompatiblePairError("catkd: needs a teacher")
        heads = {}
        for side, net, shapes in (("student", ctx.student, ctx.student_shapes), ("teacher", ctx.teacher,
                                                                               ctx.teacher_shapes)):
            last = shapes.stages[-1] if shapes.stages else None
            head = get_head(net)
            if last is None or len(last) != 4 or not isinstance(head, nn.Linear) or head.in_features != last[1]:
                got = f"{type(head).__name__} on {getattr(head, 'in_features', '?')}, last map {last and tuple(last)}"
                raise IncompatiblePairError(f"catkd: the {side}'s classifier must be an nn.Linear on the channels of "
                                            f"its last stage map (got {got})")
            if ctx.info is not None and pools_last_stage(net, ctx.info.input_shape) is False:
                raise IncompatiblePairError(f"catkd: the {side} ({type(net).__name__}) does not pool its last stage "
                                            "map into its classifier (a layer follows it): no CAMs of that map")
            heads[side] = head
        if heads["student"].out_features != heads["teacher"].out_features:
            raise IncompatiblePairError("catkd: student and teacher classify into different numbers of classes")
        object.__setattr__(self, "student_head", heads["student"])  # the student's own: trains with it, not here
        self.teacher_head = FrozenRef(heads["teacher"])

    def losses(self, batch, s, t, step):
        p, s_head, t_head = self.params, self.student_head, self.teacher_head.module
        s_cams = class_activation_maps(s.stages[-1], s_head.weight, s_head.bias if p.student_bias else None)
        with torch.no_grad():
            t_cams = class_activation_maps(t.stages[-1], t_head.weight)
            t_cams = binarize(t_cams) if p.binarize else t_cams
        return {"catkd": cat_loss(s_cams, t_cams, p.resolution, p.normalize)}
