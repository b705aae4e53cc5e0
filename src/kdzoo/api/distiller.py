"""`kdzoo.Distiller`: any kdzoo method in your own training loop.

It is the offline regime's program without the engine's loop: the same method classes bound by the same code
(`program.methods.build_methods`), the student and the methods' adapters in the same `Bundle`, the teacher
frozen in a `FrozenTeacher`, and the main phase's step (`program.phases.main_phase`), so a term computed here
equals the term `kdzoo distill` computes on the same batch and weights.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
from torch import Tensor, nn

from kdzoo.core.batch import Batch, StepInfo
from kdzoo.data.info import DatasetInfo
from kdzoo.distillers import Method, SetupContext
from kdzoo.distillers.context import StepContext
from kdzoo.errors import ConfigError
from kdzoo.models import FeatureModel, FeatureSpec, Needs
from kdzoo.models.features import feature_spec
from kdzoo.models.frozen import FrozenTeacher
from kdzoo.models.probe import probe_shapes
from kdzoo.program.bundle import Bundle, main_body, run_step, step_sources, teacher_views
from kdzoo.program.methods import build_methods, check_views, method_instances
from kdzoo.program.phases import main_phase, needs_by_network


@dataclass
class DistillerOutput:
    """What one call returns: `loss` (the weighted sum to backpropagate), `terms` (each loss term, unweighted),
    `weights` (the weight of each term in `loss`), `student_logits` (the student's logits on `x`; computed without a
    graph when no term ran the student on `x`)."""

    loss: Tensor
    terms: dict[str, Tensor]
    weights: dict[str, float]
    student_logits: Optional[Tensor]


def _plain_loop_refusal(instance: str, method: Method) -> Optional[str]:
    """Why a method cannot run in a plain loop of (x, y) batches, or None."""
    how = "; kdzoo.run or the kdzoo CLI run it"
    if method.group_layout() is not None:
        return f"{instance} trains on grouped batches (several images per row, drawn by its sampler){how}"
    if method.init_stage() is not None:
        return f"{instance} trains its connectors in an init stage before the main phase{how}"
    if method.requires.batch_transform:
        return f"{instance} trains on {method.requires.batch_transform} batches (each image in several versions){how}"
    if method.requires.epoch_passes:
        return f"{instance} passes over every training image at each epoch's start{how}"
    return None


class Distiller(nn.Module):
    """Knowledge distillation as an `nn.Module` for your own training loop.

    >>> distiller = kdzoo.Distiller(student, teacher, loss={"ce": 0.1, "kd": 0.9}, methods={"kd": {"T": 4}},
    ...                             example=images[:2])
    >>> optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05, momentum=0.9)
    >>> for epoch in range(epochs):
    ...     distiller.start_epoch(epoch)
    ...     for x, y in loader:
    ...         out = distiller(x, y)            # out.loss, out.terms, out.student_logits
    ...         optimizer.zero_grad(); out.loss.backward(); optimizer.step()
    ...         distiller.after_step()           # memory banks and queues (CRD, RRD) take this step's rows

    `loss` weighs terms by name, as a recipe's `loss:` does (`kdzoo.list_methods()` lists them); `methods` holds
    each method's parameters, as a recipe's `methods:`. `example` is a batch of inputs (two or more rows) on which
    the networks are probed for their feature shapes, so that methods size their adapters; `batch_size` is your
    loader's (SemCKD sizes its attention by it; default: the example's rows). The teacher is frozen
    (no gradient, eval mode, inference mode) and runs first on each batch. `trainable_parameters()` are the
    student's and the methods' adapters'.

    Methods with a memory over the whole training set (CRD, RRD with its bank) need `train_targets` (the labels of
    the whole training set, in index order) here and `index=` (the rows' dataset indices) in each call; methods
    that read a second view (DS-SRD's `x2`) take it as `views={"x2": ...}`. Methods that need more than a batch
    of (x, y) - grouped batches (CKD, mixup), init stages (AB, FT, FSP), rotated batches (HSAKD), passes over the
    whole training set (DS-SRD's prototypes) - are refused here in one line; `kdzoo.run` trains them.

    It works under your own `torch.autocast`, DDP (wrap the distiller: `DDP(distiller)`) and `torch.compile`.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Optional[nn.Module] = None,
        *,
        loss: dict[str, float],
        methods: Optional[dict[str, dict[str, Any]]] = None,
        example: Tensor,
        train_targets: Optional[Tensor] = None,
        num_classes: Optional[int] = None,
        batch_size: Optional[int] = None,
        epochs: int = 1,
        steps_per_epoch: int = 1,
        student_stages: Optional[list[str]] = None,
        teacher_stages: Optional[list[str]] = None,
        teacher_first: bool = True,
    ):
        super().__init__()
        if example.dim() < 2 or example.shape[0] < 2:
            raise ConfigError("example: a batch of at least two inputs (the networks are probed on it)")
        loss = dict(loss)
        classes: list[type[Method]] = [cls for _, cls in method_instances(loss).values()]
        if teacher is None and any(cls.needs_teacher() for cls in classes):
            needing = next(cls.name for cls in classes if cls.needs_teacher())
            raise ConfigError(f"loss: {needing} distils from a teacher; give Distiller(student, teacher, ...)")
        nets = {"student": student, **({"teacher": teacher} if teacher is not None else {})}
        specs = {"student": _spec(student, student_stages), "teacher": _spec(teacher, teacher_stages)}
        with torch.no_grad():
            shapes = {name: probe_shapes(net, specs[name], example) for name, net in nets.items()}
            logits = shapes["student"].logits
        classes_n = num_classes or (int(logits[-1]) if logits is not None else 0)
        targets = train_targets if train_targets is not None else torch.empty(0, dtype=torch.long)
        info = DatasetInfo("user", classes_n, tuple(example.shape[1:]), (0.0,), (1.0,))

        def setup(binding) -> SetupContext:
            return SetupContext(
                student=student,
                teacher=teacher,
                student_shapes=shapes["student"],
                teacher_shapes=shapes.get("teacher"),
                train_targets=targets,
                batch_size=batch_size or example.shape[0],
                info=info,
            )

        for instance, (_, cls) in method_instances(loss).items():
            if typing.cast(type[Method], cls).requires.index and train_targets is None:
                raise ConfigError(
                    f"loss: {instance} keeps a memory per training image: give train_targets= (the "
                    "labels of the whole training set) and index= in each call"
                )
        bound = build_methods(loss, dict(methods or {}), setup, tuple(nets))
        for instance, method in bound.items():
            why = _plain_loop_refusal(instance, method)
            if why is not None:
                raise ConfigError(f"loss: {why}")
        self.views = tuple(dict.fromkeys(["x", *(v for m in bound.values() for v in _views_read(m))]))
        check_views(bound, self.views)
        needs = needs_by_network(bound.values(), {name: Needs(logits=True) for name in nets})
        self.bundle = Bundle({"student": FeatureModel(student, needs["student"], specs["student"])}, bound)
        frozen: dict[str, Any] = {}
        if teacher is not None:
            self.teacher = FrozenTeacher(teacher, needs["teacher"], specs["teacher"])
            frozen["teacher"] = self.teacher
        self.phase = main_phase(bound, loss, self.bundle, frozen, teacher_first, epochs)
        main = [m for m in bound.values() if m.main_stage]
        self.sources = step_sources(self.bundle, frozen)
        self.prefetch = teacher_views(main, frozen) if teacher_first else []
        self.body = lambda ctx: main_body(ctx, main)
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.epoch, self.steps = 0, 0

    @property
    def student(self) -> nn.Module:
        """The bare student network (what you save and deploy)."""
        return typing.cast(FeatureModel, self.bundle.student).model

    @property
    def methods(self) -> dict[str, Method]:
        return {name: typing.cast(Method, m) for name, m in self.bundle.methods.items()}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters and those of every method's adapters (regressors, embeddings)."""
        return [p for p in self.bundle.parameters() if p.requires_grad]

    def optimizer(
        self, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4, nesterov: bool = False
    ) -> torch.optim.Optimizer:
        """SGD over `trainable_parameters()`, or the optimizer step a method brings (DOT, named in `methods=`):
        step it with `backward_step`."""
        from kdzoo.config.schema import OptimConfig
        from kdzoo.program.optim import build_optimizer

        cfg = OptimConfig(name="sgd", lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        return (self.phase.make_optimizer or build_optimizer)(self.trainable_parameters(), cfg, lr)

    def backward_step(self, out: DistillerOutput, optimizer: torch.optim.Optimizer) -> None:
        """`out.loss` backward and one optimizer step; an optimizer with loss groups (DOT) gets the task and the
        distillation gradients apart, as `kdzoo.run` steps it. Then `after_step()`."""
        if getattr(optimizer, "loss_groups", None):
            from kdzoo.engine.step import grouped_step

            grouped_step(self.phase, out.terms, optimizer, None, None)
        else:
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
        self.after_step()

    def start_epoch(self, epoch: int, steps_per_epoch: Optional[int] = None) -> None:
        """Call at the start of each epoch: methods with warm-ups (DKD, ReviewKD) ramp by it."""
        self.epoch = epoch
        if steps_per_epoch is not None:
            self.steps_per_epoch = steps_per_epoch
        if self.phase.on_epoch_start is not None:
            self.phase.on_epoch_start(epoch, None)

    def after_step(self) -> None:
        """Call after each optimizer step: methods with memory banks or queues take this step's rows."""
        if self.phase.after_step is not None:
            self.phase.after_step()
        self.steps += 1

    def forward(
        self, x: Tensor, y: Tensor, index: Optional[Tensor] = None, views: Optional[dict[str, Tensor]] = None
    ) -> DistillerOutput:
        views = dict(views or {})
        missing = [v for v in self.views if v != "x" and v not in views]
        if missing:
            raise ConfigError(f"views: the methods read view {missing[0]!r}; pass views={{{missing[0]!r}: ...}}")
        batch = Batch(inputs=x, targets=y, index=index, views={"x": x, **views} if views else {})
        info = StepInfo(epoch=self.epoch, epochs=self.epochs, step=self.steps, steps_per_epoch=self.steps_per_epoch)
        terms, logits = self._step(batch, info)
        loss = typing.cast(Tensor, sum(w * terms[t] for t, w in self.phase.weights.items() if w))
        return DistillerOutput(loss=loss, terms=terms, weights=dict(self.phase.weights), student_logits=logits)

    def _step(self, batch: Batch, info: StepInfo) -> tuple[dict[str, Tensor], Optional[Tensor]]:
        """The main phase's step (program.bundle.method_step), keeping the step's context for the logits."""
        ctx = StepContext(batch, info, self.sources)
        terms = run_step(ctx, self.bundle, self.body, self.prefetch)  # the teacher first, under inference mode
        cached = ctx.cached("student", "x")
        if cached is None:  # no term ran the student on x (mixup_ce alone): a forward without a graph
            cached = ctx.no_grad_features("student", "x", keep_statistics=True)
        return terms, cached.logits


def _views_read(method: Method) -> list[str]:
    """Every view of the batch a method reads (its own, its teacher's, other networks')."""
    views = [method.binding.view, method.binding.teacher_input]
    views += list(method.teacher_views()) if method.needs_teacher() else []
    return views + [view for _, view, _ in method.extra_reads()]


def _spec(model: Optional[nn.Module], stages: Optional[list[str]]) -> Optional[FeatureSpec]:
    """The model's feature spec with the user's stage names (models kdzoo has no table for)."""
    if model is None or stages is None:
        return None
    return replace(feature_spec(model), stages=tuple(stages))
