"""Cross-entropy of the student's logits with the labels."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from kdzoo.distillers.base import Method
from kdzoo.distillers.registry import register_method
from kdzoo.models.features import Needs


@dataclass
class CEParams:
    label_smoothing: float = 0.0


@register_method
class CrossEntropy(Method):
    name = "ce"
    task_terms = ("ce",)
    reference = "torch.nn.functional.cross_entropy"  # the code its tests compare against
    description = "cross-entropy with the ground-truth labels"
    student_needs = Needs(logits=True)
    Params = CEParams

    def losses(self, batch, s, t, step):
        logits, targets = s.logits, batch.targets
        if batch.original is not None:  # rows a batch function added (rotations) have no class label
            logits, targets = logits.index_select(0, batch.original), targets.index_select(0, batch.original)
        return {"ce": F.cross_entropy(logits, targets, label_smoothing=self.params.label_smoothing)}
