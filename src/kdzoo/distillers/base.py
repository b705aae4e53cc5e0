"""The method interface: what a distillation method declares, owns and computes.

A method is a small nn.Module: class attributes declare the features it needs from each network and what the
batches must carry; its submodules are its trainable adapters; `losses()` returns named loss terms. The engine
weights the terms by the recipe's `loss:` mapping and never refers to a method by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

from kdzoo.models.features import Features, Needs


@dataclass
class Batch:
    """One training batch. `index` holds dataset indices when some method needs them."""

    inputs: Tensor
    targets: Tensor
    index: Optional[Tensor] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.targets.shape[0]


@dataclass
class StepInfo:
    """Where training stands; methods use it for warm-up ramps (DKD, ReviewKD)."""

    epoch: int  # 0-based epoch of the current phase
    epochs: int  # epochs in the current phase
    step: int  # optimizer steps taken so far in this phase
    steps_per_epoch: int

    @property
    def progress(self) -> float:
        """Fractional epochs completed."""
        return self.step / max(self.steps_per_epoch, 1)


@dataclass
class SetupContext:
    """What a method may look at when it builds its adapters (at the start of a run, before any batch)."""

    student: nn.Module
    teacher: Optional[nn.Module]  # frozen; never register it as a submodule of a method
    student_shapes: Features  # torch.Size per feature, from a probe forward of a batch of 2
    teacher_shapes: Optional[Features]
    num_classes: int
    train_targets: Tensor  # labels of the whole training set, index order
    batch_size: int
    epochs: int
    device: torch.device


@dataclass
class InitStage:
    """A pre-training stage a method declares (AB, FT, FSP): `epochs` of `init_losses` over `modules`."""

    epochs: int
    modules: list[nn.Module]
    weights: dict[str, float]
    lr: Optional[float] = None  # None: the run's lr
    needs_student: bool = True  # False: the stage trains on teacher features alone (FT's paraphraser)


@dataclass
class NoParams:
    pass


class Method(nn.Module):
    """Base class of distillation methods. Subclasses set the class attributes and implement `losses`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    terms: ClassVar[tuple[str, ...]] = ()  # loss terms it returns; defaults to (name,)
    student_needs: ClassVar[Needs] = Needs()
    teacher_needs: ClassVar[Needs] = Needs()  # Needs() = no teacher needed
    needs_index: ClassVar[bool] = False  # batches carry dataset indices
    fixed_batch: ClassVar[bool] = False  # drop the last partial batch
    main_stage: ClassVar[bool] = True  # False: the method only acts in its init stage (AB, FSP)
    Params: ClassVar[type] = NoParams
    # Published loss weights (CIFAR-100), used by configs/make_recipes.py; variants such as "crd_kd" add rows.
    recipe_loss: ClassVar[dict[str, float]] = {}
    recipe_variants: ClassVar[dict[str, dict[str, float]]] = {}

    def __init__(self, params: Any, ctx: SetupContext):
        super().__init__()
        self.params = params

    @classmethod
    def term_names(cls) -> tuple[str, ...]:
        return cls.terms or (cls.name,)

    @classmethod
    def needs_teacher(cls) -> bool:
        return cls.teacher_needs.any

    @classmethod
    def pair_overrides(cls, teacher: str, student: str) -> dict[str, Any]:
        """Recipe changes the paper publishes for one CIFAR-100 pair, e.g. {"methods": {"dkd": {"beta": 2}}}."""
        return {}

    def losses(self, batch: Batch, s: Features, t: Optional[Features], step: StepInfo) -> dict[str, Tensor]:
        raise NotImplementedError

    # Optional hooks -------------------------------------------------------------------------------------------
    def init_stage(self) -> Optional[InitStage]:
        """A pre-training stage run before the main one, or None."""
        return None

    def init_losses(self, batch: Batch, s: Features, t: Optional[Features], step: StepInfo) -> dict[str, Tensor]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of every main-phase epoch."""

    def after_step(self) -> None:
        """Called after every optimizer step (EMA, queue and memory-bank updates)."""

    def inference_wrapper(self, student: nn.Module) -> Optional[nn.Module]:
        """A module to deploy instead of the bare student (SimKD ships a projector and the teacher head)."""
        return None

    def inference_meta(self) -> dict[str, Any]:
        """What `rebuild_inference` needs to rebuild the inference wrapper from a checkpoint (JSON-able)."""
        return {}

    @classmethod
    def rebuild_inference(cls, student: nn.Module, meta: dict[str, Any]) -> nn.Module:
        raise NotImplementedError(f"{cls.name} has no inference wrapper")


class FrozenRef:
    """Holds a module without registering it (e.g. the teacher's head inside a method): no grads, no state."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)
