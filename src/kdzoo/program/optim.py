"""Optimizers and per-step learning-rate schedules (multistep, cosine, constant, with linear warm-up)."""
from __future__ import annotations

import bisect
import math
from functools import partial
from typing import Iterable

import torch

from kdzoo.config.schema import OptimConfig, ScheduleConfig


def build_optimizer(params: Iterable, cfg: OptimConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable `params`; on a GPU their fused kernels (one launch for all parameters instead
    of several per tensor), elsewhere torch's default implementation."""
    lr = cfg.lr if lr is None else lr
    params = [p for p in params if p.requires_grad]
    fused = {"fused": True} if fusable(params) else {}
    if cfg.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    nesterov=cfg.nesterov and cfg.momentum > 0, **fused)
    else:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, **fused)
    optimizer.register_load_state_dict_post_hook(partial(_keep_implementation, fused=bool(fused)))
    return optimizer


def _keep_implementation(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """A loaded state brings its groups' `fused`/`foreach` flags (a CPU checkpoint resumed on a GPU, or back);
    keep the ones this optimizer was built with: GradScaler hands a fused optimizer's step its scale."""
    for group in optimizer.param_groups:
        group["fused"] = True if fused else None
        if fused:
            group["foreach"] = None


def fusable(params: list) -> bool:
    """Whether torch's fused optimizer kernels take these parameters: all floating point on one CUDA device."""
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params) \
        and len({p.device for p in params}) == 1


def lr_factor(cfg: ScheduleConfig, epoch_progress: float, epochs: int, base_lr: float) -> float:
    """Multiplier of the base lr after `epoch_progress` (fractional) epochs of `epochs`."""
    if cfg.warmup_epochs > 0 and epoch_progress < cfg.warmup_epochs:
        return (epoch_progress + 1e-8) / cfg.warmup_epochs
    if cfg.name == "multistep":
        # Steps take effect at the start of the milestone epoch, as with MultiStepLR stepped per epoch.
        return cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), math.floor(epoch_progress))
    if cfg.name == "cosine":
        span = max(epochs - cfg.warmup_epochs, 1e-8)
        done = min(max(epoch_progress - cfg.warmup_epochs, 0.0) / span, 1.0)
        floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))
    return 1.0
