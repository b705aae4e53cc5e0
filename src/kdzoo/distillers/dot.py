"""DOT: a distillation-oriented trainer (Zhao et al., ICCV 2023; megvii-research/mdistiller engine/dot.py).

Not a loss: an SGD step with separate momentum for the task-loss and the distillation-loss gradients. With the
recipe's momentum m and DOT's delta,

    m_task = m - delta,   m_kd = m + delta
    b_task <- m_task b_task + g_task (+ wd * theta)      b_kd <- m_kd b_kd + g_kd
    theta  <- theta - lr b_task - lr b_kd

so the distillation gradient keeps more of its history than the task gradient. Parameters that only one of the
two losses reaches (the distillation adapters, or the student's head under a feature method) use the mean momentum
(m_task + m_kd) / 2 = m for that loss, and weight decay enters once: in the task gradient where a parameter has
one, else in the distillation one. Follows mdistiller's `dot()` exactly, quirks included: a momentum buffer
starts as the first gradient (no `1 - dampening` scaling), and a parameter that only the distillation loss reaches
starts its buffer without weight decay. Which terms are the task loss: the methods' `task_terms` (ce).

A recipe asks for it with `methods: {dot: {delta: 0.075}}` beside its loss terms (mdistiller: KD + DOT with
delta 0.075 on CIFAR-100, 0.09 on ImageNet); it needs `optim.name: sgd`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from kdzoo.distillers.base import Method, Recipes
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError


class DistillationOrientedTrainer(torch.optim.Optimizer):
    """SGD with one momentum buffer per loss group. The step hands it the distillation gradients first
    (`keep_gradients("distill", params, grads)`), then leaves the task gradients in `.grad` and calls `step()`."""

    loss_groups = ("distill", "task")

    def __init__(self, params, lr: float, momentum: float, momentum_kd: float, weight_decay: float = 0.0,
                 dampening: float = 0.0):
        if lr < 0 or momentum < 0 or momentum_kd < 0 or weight_decay < 0:
            raise ValueError("DOT: lr, momenta and weight decay must be >= 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, momentum_kd=momentum_kd,
                                      weight_decay=weight_decay, dampening=dampening))
        self._kd_grads: dict[int, Tensor] = {}  # id(param) -> its distillation gradient of this step

    def keep_gradients(self, group: str, params: list[Tensor], grads: list[Optional[Tensor]]) -> None:
        if group != "distill":
            raise ValueError(f"DOT takes the distill group's gradients apart, not {group!r}")
        self._kd_grads = {id(p): g.detach() for p, g in zip(params, grads) if g is not None}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        kd_grads, self._kd_grads = self._kd_grads, {}
        for group in self.param_groups:
            lr, wd, damp = group["lr"], group["weight_decay"], group["dampening"]
            m_task, m_kd = group["momentum"], group["momentum_kd"]
            m_mean = (m_task + m_kd) / 2.0
            with_task = [p for p in group["params"] if p.grad is not None]
            for p in with_task:  # the task gradient, with weight decay
                d_p = p.grad.add(p, alpha=wd) if wd != 0 else p.grad
                if m_task != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d_p.detach().clone()
                    else:
                        buf.mul_(m_task if id(p) in kd_grads else m_mean).add_(d_p, alpha=1 - damp)
                    d_p = buf
                p.add_(d_p, alpha=-lr)
            task_ids = {id(p) for p in with_task}
            for p in group["params"]:  # the distillation gradient, weight decay only where no task gradient
                d_p = kd_grads.get(id(p))
                if d_p is None:
                    continue
                state = self.state[p]
                buf = state.get("momentum_kd_buffer")
                if buf is None:
                    buf = state["momentum_kd_buffer"] = d_p.clone()
                elif id(p) in task_ids:
                    buf.mul_(m_kd).add_(d_p, alpha=1 - damp)
                else:
                    if wd != 0:
                        d_p = d_p.add(p, alpha=wd)
                    buf.mul_(m_mean).add_(d_p, alpha=1 - damp)
                p.add_(buf, alpha=-lr)
        return loss


@dataclass
class DOTParams:
    delta: float = field(default=0.075, metadata={"ge": 0, "hint": "momentum shift: m -/+ delta for task/kd"})


@register_method
class DOT(Method):
    name = "dot"
    reference = "megvii-research/mdistiller"  # the code its tests compare against (engine/dot.py)
    description = "distillation-oriented trainer: SGD with a larger momentum for the distillation gradients"
    paper = "Zhao et al., DOT: A Distillation-Oriented Trainer, ICCV 2023"
    terms = ()  # no loss of its own: it changes how the others' gradients update the weights
    Params = DOTParams
    recipes = Recipes(loss={"ce": 0.1, "kd": 0.9})  # mdistiller configs/cifar100/dot: KD (0.1 / 0.9, T 4) + DOT

    def step_losses(self, ctx):
        return {}

    def make_optimizer(self, params, cfg, lr):
        if cfg.name != "sgd" or cfg.nesterov:
            raise ConfigError("methods.dot: DOT is an SGD variant; set optim.name: sgd and optim.nesterov: false")
        delta = self.params.delta
        if delta > cfg.momentum:
            raise ConfigError(f"methods.dot.delta: {delta} exceeds optim.momentum {cfg.momentum} (the task "
                              "momentum m - delta would be negative)")
        return DistillationOrientedTrainer([p for p in params if p.requires_grad], lr=lr,
                                           momentum=cfg.momentum - delta, momentum_kd=cfg.momentum + delta,
                                           weight_decay=cfg.weight_decay)
