"""HSAKD: distil the teacher's self-supervised augmented distributions, per auxiliary head and on the backbone.

    hsakd        = sum_h KD_T(head_h^s(x_rot), head_h^t(x_rot))
    hsakd_logits = KD_T(z_s(x_rot), z_t(x_rot))            over all 4B rotated rows
    KD_T(a, b)   = T^2 * KL(softmax(b / T) || softmax(a / T)), batch-mean over the 4B rows, T = 3

with `ce` on the unrotated rows (rotate4's `original` mask) and every weight 1; the student gets no joint-label
CE (its heads learn from the teacher's alone), and its stage features reach its heads with gradients.
Source: Yang et al., Hierarchical Self-supervised Augmented Knowledge Distillation, IJCAI 2021
(winycg/HSAKD train_student_cifar.py). Teacher and student heads are paired from the deepest when their counts
differ (an extra shallow head of the longer one gets no term).
"""
from __future__ import annotations

from dataclasses import dataclass

from kdzoo.distillers.base import Method, Recipes, Requires
from kdzoo.distillers.kd import kd_loss
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError
from kdzoo.models.features import Needs


def paired_heads(student_heads: list, teacher_heads: list) -> list[tuple]:
    """(student head, teacher head) pairs from the deepest head down."""
    return list(zip(reversed(student_heads), reversed(teacher_heads)))[::-1]


@dataclass
class HSAKDParams:
    T: float = 3.0


@register_method
class HSAKD(Method):
    name = "hsakd"
    reference = "winycg/HSAKD"  # the code its tests compare against
    description = "KD of the self-supervised augmented distributions: every aux head and the backbone logits"
    paper = "Yang et al., Hierarchical Self-supervised Augmented Knowledge Distillation, IJCAI 2021"
    terms = ("hsakd", "hsakd_logits")
    student_needs = Needs(logits=True, heads=True)
    teacher_needs = Needs(logits=True, heads=True)
    requires = Requires(batch_transform="rotate4")
    recipes = Recipes(loss={"ce": 1.0, "hsakd": 1.0, "hsakd_logits": 1.0})
    Params = HSAKDParams

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        for role, model in (("student", ctx.student), ("teacher", ctx.teacher)):
            if not hasattr(model, "head_logits"):
                arch = getattr(model, "kdzoo_arch", type(model).__name__)
                if role == "teacher" and ctx.teacher_checkpoint:
                    arch = f"{arch}, from {ctx.teacher_checkpoint}"
                hint = ("train one with `kdzoo train -c configs/<data>/hsakd/teacher-<arch>.yaml` (an <arch>_aux "
                        "model with loss ce + aux_ce)") if role == "teacher" else "use student.arch: <arch>_aux"
                raise ConfigError(f"hsakd: the {role} ({arch}) has no auxiliary heads; {hint}")

    def losses(self, batch, s, t, step):
        T = self.params.T
        pairs = paired_heads(s.heads, t.heads)
        return {"hsakd": sum(kd_loss(hs, ht, T) for hs, ht in pairs),
                "hsakd_logits": kd_loss(s.logits, t.logits, T)}
