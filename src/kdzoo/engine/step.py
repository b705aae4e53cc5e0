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
    if getattr(optimizer, "loss_groups", None):
        grouped_step(phase, terms, optimizer, scaler, grad_clip)
        return total.detach(), terms
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


def grouped_step(phase: Phase, terms: dict[str, torch.Tensor], optimizer, scaler, grad_clip) -> None:
    """An optimizer with `loss_groups` (DOT: ("distill", "task")) gets each group's gradient apart: every group
    but the last through `optimizer.keep_gradients(group, params, grads)` (autograd.grad, averaged over the
    processes by hand: DDP's hooks only see `.backward()`), the last in `.grad`, then `optimizer.step()`. A term
    is "task" when its method declares it in `task_terms`, else "distill"; a group with no term gets no gradient."""
    if scaler is not None:
        raise KdzooError("engine.precision: fp16 loss scaling cannot split the gradient into loss groups (the "
                         "method's own optimizer step); use bf16 or fp32")
    params = [p for p in phase.params if p.requires_grad]
    *first, last = optimizer.loss_groups
    optimizer.zero_grad(set_to_none=True)
    for group in first:
        part = _group_total(terms, phase, group)
        grads = [None] * len(params) if part is None else list(
            torch.autograd.grad(part, params, retain_graph=True, allow_unused=True))
        _all_reduce_mean(grads)
        if grad_clip:
            _clip(grads, grad_clip)
        optimizer.keep_gradients(group, params, grads)
    part = _group_total(terms, phase, last)
    if part is not None:
        part.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def _group_total(terms, phase: Phase, group: str) -> Optional[torch.Tensor]:
    weights = {k: w for k, w in phase.weights.items() if (k in phase.task_terms) == (group == "task") and w != 0}
    return weighted_total(terms, weights) if weights else None


def _all_reduce_mean(grads: list) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for g in grads:
            if g is not None:
                dist.all_reduce(g)
                g.div_(dist.get_world_size())


def _clip(grads: list, max_norm: float) -> None:
    present = [g for g in grads if g is not None]
    if not present:
        return
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in present]))
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in present:
        g.mul_(scale)
