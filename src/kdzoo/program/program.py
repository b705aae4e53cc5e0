"""The declarative program a regime builds and the engine executes: named model slots, data streams, phases and
deployable artifacts. The engine knows none of them by name; it iterates phases over their streams, steps their
optimizers, calls their controllers, evaluators and hooks, and checkpoints `trainable` and the artifacts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from kdzoo.config.schema import Config
from kdzoo.core.batch import Batch, StepInfo
from kdzoo.core.dist import DistInfo, broadcast_buffers, world_size
from kdzoo.data.info import DatasetInfo
from kdzoo.data.stream import DataStream
from kdzoo.errors import ConfigError
from kdzoo.models.ema import ema_update

ROLES = ("train", "frozen", "ema", "cached")


@dataclass
class BuildContext:
    """What a program factory (`Regime.build`) gets from the engine."""

    cfg: Config
    device: torch.device
    dist: DistInfo
    log: Callable[[str], None] = print
    out: Optional[Path] = None  # the run folder (None: a program built outside a run), for per-run data files


@dataclass
class ModelSlot:
    """One named network. `module` is the bare network (what is saved and deployed); `features` is what
    `StepContext.features` calls (a FeatureModel or FrozenTeacher around it; default: the module itself).

    role: train (the optimizer updates it), frozen (never updated; eval mode), ema (after every optimizer step
    `module <- decay * module + (1 - decay) * slots[ema_of].module`), cached (outputs read from a cache)."""

    module: nn.Module
    role: str = "train"
    features: Optional[Callable[[Tensor], Any]] = None
    ema_of: Optional[str] = None
    ema_decay: float = 0.999
    ema_buffers: str = "copy"  # BN statistics: copy the source's, average them too ("ema"), or "keep" its own
    train_mode: bool = False  # an untrained slot that still runs in training mode (BYOL's target: batch statistics)
    starts_as_source: bool = False  # an EMA slot that starts as a copy of its source, taken once the engine placed
    # the program (under DDP: after rank 0's weights reached every rank)

    def __post_init__(self):
        if self.role not in ROLES:
            raise ConfigError(f"model slot role {self.role!r}: use one of {', '.join(ROLES)}")
        if (self.role == "ema") != (self.ema_of is not None) or (self.starts_as_source and self.role != "ema"):
            raise ConfigError("model slot: role ema and ema_of go together (and only an ema slot starts as its source)")
        if self.features is None:
            self.features = self.module

    @property
    def frozen(self) -> bool:
        return self.role != "train"


@dataclass
class Artifact:
    """A deployable network: `module()` gives it (its state_dict is what the checkpoint holds), `meta()` the
    metadata that rebuilds it (arch, classes, wrapper)."""

    module: Callable[[], nn.Module]
    meta: Callable[[], dict[str, Any]]


@dataclass
class Phase:
    """A stretch of training with its own optimizer: `epochs` of `step` over batches of `stream`.

    step(batch, info) returns the loss terms; `weights` says which terms the loss sums and how.
    controller(optimizer, steps_per_epoch) -> Controller: the lr schedule and what happens after evaluation
    (None: a constant lr). evaluators run after every `engine.eval_every` epochs and the last; `select` names
    the metric that decides the best checkpoint (higher is better) and `report` the stream reported as the
    run's result. `at_best` evaluators run once, when the phase ends, on the weights of its best evaluation (the
    test stream of a run that selects on val: only its numbers at the best val point are reported).
    on_epoch_start(epoch, runtime) and after_step() are the phase's hooks; on_epoch_start may return numbers
    for the epoch's metrics line (what a per-epoch pass cost).
    """

    name: str
    epochs: int
    params: list
    step: Callable[[Batch, StepInfo], dict[str, Tensor]]
    weights: dict[str, float]
    stream: str = "train"
    controller: Optional[Callable[..., Any]] = None
    evaluators: list = field(default_factory=list)
    at_best: list = field(default_factory=list)
    select: str = "test_top1"
    report: str = "test"
    lr: Optional[float] = None  # None: the recipe's optim.lr
    on_epoch_start: Optional[Callable[[int, Any], Optional[dict[str, float]]]] = None
    after_step: Optional[Callable[[], None]] = None
    make_optimizer: Optional[Callable[[list, Any, Optional[float]], Any]] = None  # a method's own (DOT); None: optim:
    task_terms: frozenset = frozenset()  # the weighted terms that are the task loss (an optimizer's loss groups)

    @property
    def evaluates(self) -> bool:
        return bool(self.evaluators)


@dataclass
class Program:
    """What `Regime.build(ctx)` returns.

    trainable: one module holding every trained parameter and all training state (adapters, banks); it is
    what DDP wraps and what the resume state saves. artifacts: what checkpoints deploy, the first one as
    `last/best.safetensors`, any other as `<name>.last/best.safetensors`."""

    models: dict[str, ModelSlot]
    data: dict[str, DataStream]
    phases: list[Phase]
    artifacts: dict[str, Artifact]
    trainable: nn.Module
    info: DatasetInfo
    describe: Callable[[], dict[str, Any]] = dict

    def __post_init__(self):
        for name, slot in self.models.items():
            if slot.role == "ema" and slot.ema_of not in self.models:
                raise ConfigError(f"model {name}: ema_of {slot.ema_of!r} is not a model of this program")
        for phase in self.phases:
            if phase.stream not in self.data:
                raise ConfigError(f"phase {phase.name}: no data stream named {phase.stream!r}")
            if not self.data[phase.stream].train:
                raise ConfigError(f"phase {phase.name}: stream {phase.stream!r} is not a training stream (shuffled, "
                                  "equal batches on every process)")
            if not any(p.requires_grad for p in phase.params):
                raise ConfigError(f"phase {phase.name}: nothing to train (every parameter is frozen)")
        if not self.artifacts:
            raise ConfigError("a program needs at least one artifact to deploy")

    def use_runner(self, runner: nn.Module) -> None:
        """The engine placed the program: `runner` (DDP around `trainable`, or `trainable`) runs every step; EMA
        slots that start as their source copy it now, so that every process starts from the same weights."""
        self.trainable.use_runner(runner)
        for slot in self.models.values():
            if slot.starts_as_source:
                slot.module.load_state_dict(self.models[slot.ema_of].module.state_dict())

    def train(self, mode: bool = True) -> None:
        """Trainable slots follow `mode`; frozen, cached and EMA slots stay in eval mode (unless `train_mode`)."""
        self.trainable.train(mode)
        for slot in self.models.values():
            if slot.frozen:
                slot.module.train(mode and slot.train_mode)

    def after_optimizer_step(self) -> None:
        """EMA slots follow their sources. Under DDP a source's BN statistics moved on each process's own batch
        since DDP's broadcast at the forward: rank 0's are handed out first, so every rank's EMA (and source)
        agrees with what rank 0 saves."""
        for slot in self.models.values():
            if slot.role == "ema":
                source = self.models[slot.ema_of].module
                if slot.ema_buffers != "keep":
                    broadcast_buffers(source, DistInfo(world_size=world_size()))
                ema_update(slot.module, source, slot.ema_decay, slot.ema_buffers)

    def state_dict(self) -> dict[str, Any]:
        state = {"bundle": self.trainable.state_dict()}
        ema = {name: slot.module.state_dict() for name, slot in self.models.items() if slot.role == "ema"}
        if ema:
            state["ema"] = ema
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainable.load_state_dict(state["bundle"])
        for name, weights in state.get("ema", {}).items():
            self.models[name].module.load_state_dict(weights)

    @torch.no_grad()
    def snapshot(self) -> dict[str, Any]:
        """A detached copy of the state (the best weights a controller may reload)."""
        def copy(value):
            if isinstance(value, Tensor):
                return value.detach().clone()
            if isinstance(value, dict):
                return {k: copy(v) for k, v in value.items()}
            return value

        return copy(self.state_dict())


@dataclass
class Runtime:
    """What the engine lends a phase's hooks and evaluators while it runs: the device, the processes, the
    program's streams and their loaders, and the (0-based) epoch of the phase being run."""

    program: Program
    device: torch.device
    dist: DistInfo = field(default_factory=DistInfo)
    channels_last: bool = False
    epoch: int = 0

    def stream(self, name: str) -> DataStream:
        return self.program.data[name]

    def loader(self, name: str):
        return self.stream(name).loader(self.dist)
