"""One optimizer step of a phase: forward under autocast, weighted loss, backward, clip, step."""
from __future__ import annotations

from typing import Optional

import torch

from kdzoo.core.batch import Batch, StepInfo
from kdzoo.engine.device import Precision
from kdzoo.errors import KdzooError
from kdzoo.program import Phase


def weighted_total(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The step's loss: sum of weight * term over the non-zero weights of the recipe."""
    total = None
    for key, weight in weights.items():
        if weight == 0:
            continue
        if key not in terms:
            raise KdzooError(f"loss.{key}: no method produced this term")
        value = weight * terms[key].float()
        total = value if total is None else total + value
    if total is None:
        raise KdzooError("loss: no non-zero term")
    return total


def train_step(phase: Phase, batch: Batch, info: StepInfo, optimizer: torch.optim.Optimizer,
               precision: Precision, scaler: Optional[torch.amp.GradScaler] = None,
               grad_clip: Optional[float] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    with precision.autocast():
        terms = phase.step(batch, info)
    total = weighted_total(terms, phase.weights)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
    else:
        total.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(phase.params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return total.detach(), terms
