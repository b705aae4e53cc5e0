"""The method interface: what a distillation method declares, owns and computes.

A method is a small nn.Module: class attributes declare the features it needs from each network and what the
batches must carry; its submodules are its trainable adapters; `losses()` returns named loss terms. The engine
weights the terms by the recipe's `loss:` mapping and never refers to a method by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from torch import Tensor, nn

from kdzoo.core.batch import Batch, Binding, StepInfo
from kdzoo.models.features import Features, Needs

if TYPE_CHECKING:
    from kdzoo.distillers.context import StepContext


@dataclass
class SetupContext:
    """What a method may look at when it builds its adapters (at the start of a run, before any batch)."""

    student: nn.Module
    teacher: Optional[nn.Module]  # frozen; never register it as a submodule of a method
    student_shapes: Features  # torch.Size per feature, from a probe forward of a batch of 2
    teacher_shapes: Optional[Features]
    train_targets: Tensor  # labels of the whole training set, index order (its size: the dataset's)
    batch_size: int
    teacher_checkpoint: Optional[str] = None  # where the teacher came from (for error messages)
    info: Optional[Any] = None  # the DatasetInfo of the training data (normalisation, input shape)
    teacher_logits_trained: bool = True  # False: a self-supervised teacher, whose classifier never trained


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


@dataclass(frozen=True)
class Requires:
    """What a method needs of the run, read when its program is built."""

    index: bool = False  # batches carry dataset indices
    full_batches: bool = False  # the last partial batch is dropped
    batch_transform: Optional[str] = None  # e.g. "rotate4": the training batches it needs
    labels: bool = True  # False: trains without labels (a self-supervised regime takes only these)
    epoch_passes: bool = False  # on_epoch_start gets passes over the training images
    live_teacher: bool = False  # the teacher runs live even when the recipe caches its outputs


@dataclass(frozen=True)
class Recipes:
    """What only configs/make_recipes.py reads: the published loss weights (CIFAR-100), rows that add to them
    (`crd_kd`) with the method parameters a row sets (`kd_ls`: `variant_params`), and recipes written apart
    (DS-SRD's: `apart`; CKD's few-sample ones: `few_sample`), and what its recipes' `dataset:` section needs
    beside the dataset's own settings (MLKD's two views: `dataset={"views": {"x": "train", "strong": "strong"}}`)."""

    loss: dict[str, float] = field(default_factory=dict)
    variants: dict[str, dict[str, float]] = field(default_factory=dict)
    variant_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    apart: bool = False
    few_sample: bool = False
    dataset: dict[str, Any] = field(default_factory=dict)  # merged into the generated recipes' dataset section
    pairs: Optional[tuple[tuple[str, str], ...]] = None  # the CIFAR-100 (teacher, student) pairs it can run; None: all


class Method(nn.Module):
    """Base class of distillation methods. Subclasses set the class attributes and implement `losses`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    reference: ClassVar[str] = ""  # the original implementation its parity tests compare against
    terms: ClassVar[Optional[tuple[str, ...]]] = None  # loss terms it returns; None: (name,); (): none (DOT)
    task_terms: ClassVar[tuple[str, ...]] = ()  # its terms that are the task loss (CE), not distillation
    student_needs: ClassVar[Needs] = Needs()
    teacher_needs: ClassVar[Needs] = Needs()  # Needs() = no teacher needed
    requires: ClassVar[Requires] = Requires()
    main_stage: ClassVar[bool] = True  # False: the method only acts in its init stage (AB, FSP)
    selects: ClassVar[Optional[str]] = None  # the metric that picks the best epoch where this method trains and no
    # val stream does (aux_ce: "heads_top1", as HSAKD keeps a teacher's best head)
    synced_buffers: ClassVar[tuple[str, ...]] = ()  # buffers it keeps equal on every process itself (banks,
    # queues updated from every rank's batch): DDP leaves them alone (core/dist.py)
    Params: ClassVar[type] = NoParams
    recipes: ClassVar[Recipes] = Recipes()

    def __init__(self, params: Any, ctx: SetupContext):
        super().__init__()
        self.params = params

    @classmethod
    def term_names(cls) -> tuple[str, ...]:
        return (cls.name,) if cls.terms is None else cls.terms

    @classmethod
    def needs_teacher(cls) -> bool:
        return cls.teacher_needs.any

    @classmethod
    def pair_overrides(cls, teacher: str, student: str) -> dict[str, Any]:
        """Recipe changes the paper publishes for one CIFAR-100 pair, e.g. {"methods": {"dkd": {"beta": 2}}}."""
        return {}

    def losses(self, batch: Batch, s: Features, t: Optional[Features], step: StepInfo) -> dict[str, Tensor]:
        raise NotImplementedError

    # What a program's step calls: the default reads the bound networks from the step context and calls
    # `losses` / `init_losses`; a method that needs more (several views, no-grad passes) overrides these.
    @property
    def binding(self) -> Binding:
        return self.__dict__.get("_binding") or Binding()

    def bind(self, binding: Binding) -> "Method":
        self.__dict__["_binding"] = binding  # a plain attribute: not a submodule, not in the state_dict
        return self

    def step_losses(self, ctx: "StepContext") -> dict[str, Tensor]:
        b = self.binding
        s = ctx.features(b.student, b.view)
        t = ctx.teacher_features(b) if self.needs_teacher() else None
        return {b.term(k): v for k, v in self.losses(ctx.batch, s, t, ctx.info).items()}

    def step_init_losses(self, ctx: "StepContext", needs_student: bool = True) -> dict[str, Tensor]:
        b = self.binding
        s = ctx.features(b.student, b.view) if needs_student else Features()
        t = ctx.teacher_features(b) if self.needs_teacher() else None
        return {b.term(k): v for k, v in self.init_losses(ctx.batch, s, t, ctx.info).items()}

    # Optional hooks -------------------------------------------------------------------------------------------
    def teacher_views(self) -> tuple[str, ...]:
        """The views of the batch whose teacher outputs it reads (what a step may compute first)."""
        return (self.binding.teacher_input,)

    def reads_labels(self) -> bool:
        """Whether this instance reads labels (a method may read none with some parameters: CRD's instance
        negatives)."""
        return self.requires.labels

    def reads_teacher_logits(self) -> bool:
        """Whether it reads the teacher's classifier outputs (refused for a self-supervised teacher, whose
        classifier never trained)."""
        return self.needs_teacher() and self.teacher_needs.logits

    def extra_reads(self) -> tuple[tuple[str, str, Needs], ...]:
        """(network, view, needs) a step reads beyond its bound student and teacher (proto's key network)."""
        return ()

    def group_layout(self):
        """The groups of training images its batches must be (data/groups.py GroupLayout), or None."""
        return None

    def init_stage(self) -> Optional[InitStage]:
        """A pre-training stage run before the main one, or None."""
        return None

    def init_losses(self, batch: Batch, s: Features, t: Optional[Features], step: StepInfo) -> dict[str, Tensor]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, passes: Optional[Any] = None) -> Optional[dict[str, float]]:
        """Called at the start of every main-phase epoch. A method that requires `epoch_passes` gets `passes`
        (program/epoch_pass.py EpochPasses: embeddings of the training images); it may return numbers to log."""
        return None

    def after_step(self) -> None:
        """Called after every optimizer step (EMA, queue and memory-bank updates)."""

    def make_optimizer(self, params: list, cfg: Any, lr: float) -> Optional[Any]:
        """An optimizer of its own for the phase's `params` (DOT), built from the recipe's `optim:` section at lr
        `lr`, or None. An optimizer with `loss_groups` (e.g. ("distill", "task")) gets each group's gradient
        separately (engine/step.py grouped_step); at most one method of a run may bring one."""
        return None

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
