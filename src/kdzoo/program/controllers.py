"""Controllers: what sets a phase's learning rate and acts on its evaluations.

Every controller steps a per-step schedule (multistep, cosine, constant; with warm-up) and scales it by its own
factor; `after_eval` may cut that factor, ask for the best weights back, or stop the phase. Its state is part of
the resume state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from kdzoo.config.schema import ScheduleConfig
from kdzoo.errors import ConfigError
from kdzoo.program.optim import lr_factor


@dataclass
class Decision:
    """What the engine does after an evaluation."""

    reload_best: bool = False  # put the best weights back (the program's trainable state)
    stop: bool = False  # end the phase now


class Controller:
    """The schedule alone: never acts on evaluations."""

    wants_best_state = False  # True: the engine keeps the best trainable state (for reload_best)

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, epochs: int,
                 steps_per_epoch: int):
        self.optimizer = optimizer
        self.scale = 1.0
        base_lr = optimizer.param_groups[0]["lr"]
        self._factor = lambda step: lr_factor(schedule, step / max(steps_per_epoch, 1), epochs, base_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self._factor(step) * self.scale)

    def after_step(self) -> None:
        self.scheduler.step()

    def after_eval(self, metrics: dict[str, float], improved: bool) -> Decision:
        return Decision()

    def _apply_scale(self) -> None:
        step = self.scheduler.last_epoch
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * self._factor(step) * self.scale

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.scale = state.get("scale", 1.0)
        self._apply_scale()


class PlateauController(Controller):
    """After `patience` evaluations in a row without a new best (of the phase's `select` metric): multiply the
    lr by `factor`, and reload the best weights when `reload_best`; after `max_cuts` cuts, the next plateau
    stops the phase (CKD's few-sample schedule: "not improved for 50 validations")."""

    def __init__(self, optimizer, schedule: ScheduleConfig, epochs: int, steps_per_epoch: int, patience: int,
                 factor: float, reload_best: bool = True, max_cuts: Optional[int] = None):
        super().__init__(optimizer, schedule, epochs, steps_per_epoch)
        self.patience, self.factor, self.reload_best, self.max_cuts = patience, factor, reload_best, max_cuts
        self.wants_best_state = reload_best
        self.bad, self.cuts = 0, 0

    def after_eval(self, metrics: dict[str, float], improved: bool) -> Decision:
        if improved:
            self.bad = 0
            return Decision()
        self.bad += 1
        if self.bad < self.patience:
            return Decision()
        self.bad = 0
        if self.max_cuts is not None and self.cuts >= self.max_cuts:
            return Decision(reload_best=self.reload_best, stop=True)
        self.cuts += 1
        self.scale *= self.factor
        self._apply_scale()
        return Decision(reload_best=self.reload_best)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "bad": self.bad, "cuts": self.cuts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.bad, self.cuts = state.get("bad", 0), state.get("cuts", 0)


ControllerFactory = Callable[[torch.optim.Optimizer, int], Controller]


def controller_for(schedule: ScheduleConfig, epochs: int) -> ControllerFactory:
    """The controller a recipe's `schedule:` asks for: `plateau` cuts on evaluations (its per-step part is
    constant with warm-up), the other names are schedules alone."""
    if schedule.name == "plateau":
        base = ScheduleConfig(name="constant", warmup_epochs=schedule.warmup_epochs)
        factor, cuts = plateau_cut(schedule)
        return lambda optimizer, steps: PlateauController(
            optimizer, base, epochs, steps, schedule.patience, factor, schedule.reload_best, cuts)
    return lambda optimizer, steps: Controller(optimizer, schedule, epochs, steps)


def plateau_cut(schedule: ScheduleConfig) -> tuple[float, Optional[int]]:
    """(factor, cuts) of a plateau schedule; `factor`/`cuts` are the CKD names of `gamma`/`max_cuts`."""
    if schedule.cuts is not None and schedule.max_cuts is not None and schedule.cuts != schedule.max_cuts:
        raise ConfigError(f"schedule.cuts: {schedule.cuts} and schedule.max_cuts: {schedule.max_cuts} disagree; "
                          "give one")
    factor = schedule.factor if schedule.factor is not None else schedule.gamma
    return factor, schedule.cuts if schedule.cuts is not None else schedule.max_cuts


def constant(epochs: int) -> ControllerFactory:
    return controller_for(ScheduleConfig(name="constant"), epochs)
