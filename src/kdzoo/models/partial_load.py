"""Loading the part of a checkpoint that fits: a backbone into a model with a new head, a plain network into
a larger one (HSAKD's `_aux` models, transfer probes). What was skipped is reported, never silently dropped."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kdzoo.errors import CheckpointError


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint: keep their init
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    reshaped: list[str] = field(default_factory=list)  # in both, with another shape (e.g. a new head)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        for label, names in (("kept initial", self.missing), ("skipped (not in the model)", self.unexpected),
                             ("skipped (another shape)", self.reshaped)):
            if names:
                shown = ", ".join(names[:4]) + (f", ... ({len(names)})" if len(names) > 4 else "")
                parts.append(f"{label}: {shown}")
        return "; ".join(parts)


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                  prefix: str = "") -> LoadReport:
    """Copy every tensor of `state` whose name (after `prefix`, e.g. 'backbone.') and shape fit `model`."""
    own = model.state_dict()
    report = LoadReport()
    fitting = {}
    for key, value in state.items():
        target = prefix + key
        if target not in own:
            report.unexpected.append(key)
        elif tuple(own[target].shape) != tuple(value.shape):
            report.reshaped.append(key)
        else:
            fitting[target] = value
            report.loaded.append(target)
    if not any(v.is_floating_point() and v.dim() > 1 for v in fitting.values()):  # counters, biases fit by chance
        raise CheckpointError(f"{source}: no tensor fits {type(model).__name__}"
                              + (f" under {prefix!r}" if prefix else "") + "; is it the right checkpoint?")
    report.missing = [k for k in own if k not in fitting]
    model.load_state_dict(fitting, strict=False)
    return report
