"""Self-supervised auxiliary heads trained on joint (class, rotation) labels: HSAKD's teacher loss beside CE.

    aux_ce = sum_h CE(head_h(x_rot), 4 * y + k)     mean over the 4B rotated rows, summed over the heads

Source: Yang et al., Hierarchical Self-supervised Augmented Knowledge Distillation, IJCAI 2021
(winycg/HSAKD train_teacher_cifar.py). With `ce` (which the `original` mask of rotate4 restricts to the
unrotated rows) this is the full teacher loss, for both teacher options: option 1 freezes the backbone
(`student.freeze: [backbone]`), option 2 trains everything.
"""
from __future__ import annotations

import torch.nn.functional as F

from kdzoo.distillers.base import Method, NoParams, Recipes, Requires
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError
from kdzoo.models.features import Needs


def aux_ce_loss(heads, joint_targets):
    """sum over heads of the batch-mean CE with the joint labels."""
    return sum(F.cross_entropy(h.float(), joint_targets) for h in heads)


@register_method
class AuxCE(Method):
    name = "aux_ce"
    task_terms = ("aux_ce",)
    reference = "winycg/HSAKD"  # the code its tests compare against
    description = "CE of an _aux model's rotation heads with joint (class, rotation) labels"
    selects = "heads_top1"  # HSAKD keeps the teacher epoch of its best head (train_teacher_cifar.py)
    paper = "Yang et al., Hierarchical Self-supervised Augmented Knowledge Distillation, IJCAI 2021"
    student_needs = Needs(heads=True)
    requires = Requires(batch_transform="rotate4")
    recipes = Recipes(loss={"ce": 1.0, "aux_ce": 1.0})
    Params = NoParams

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        if not hasattr(ctx.student, "head_logits"):
            raise ConfigError(f"aux_ce: {getattr(ctx.student, 'kdzoo_arch', 'the model')} has no auxiliary heads; "
                              "train an _aux model (e.g. resnet8_aux)")

    def losses(self, batch, s, t, step):
        return {"aux_ce": aux_ce_loss(s.heads, batch.aux_targets)}
