"""The data types every layer passes around: one training batch, where training stands, and which networks and
view a method instance reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from torch import Tensor


@dataclass
class Batch:
    """One training batch. `index` holds dataset indices when some method needs them; `views` the named views
    of the samples when the stream makes several (`inputs` is the first); `original` holds the indices of the rows
    that are original samples where a batch function added others (rotations; indices, not a mask, so that
    selecting them needs no host synchronisation), `mixed_targets` and `mix_lambda` the
    second labels and weight of mixed inputs (`mix_lambda`: one weight per mixed part for grouped batches),
    `groups` the GroupLayout of a grouped batch (data/groups.py) with `view_index`/`view_targets` the dataset
    indices and labels of every view's rows, `aux_targets` the labels of a self-supervised task."""

    inputs: Tensor
    targets: Tensor
    index: Optional[Tensor] = None
    views: dict[str, Tensor] = field(default_factory=dict)
    original: Optional[Tensor] = None
    mixed_targets: Optional[Tensor] = None
    mix_lambda: Optional[Tensor] = None
    groups: Optional[Any] = None
    aux_targets: Optional[Tensor] = None  # labels of a self-supervised task per row (rotate4's joint labels)
    view_index: dict[str, Tensor] = field(default_factory=dict)
    view_targets: dict[str, Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.targets.shape[0]

    def view(self, name: str = "x") -> Tensor:
        """The inputs of view `name`; "x" is `inputs` when the stream names no views."""
        if name in self.views:
            return self.views[name]
        if name == "x":
            return self.inputs
        raise KeyError(f"this batch has no view {name!r} (views: {', '.join(self.views) or 'x'})")

    def index_of(self, name: str = "x") -> Tensor:
        """The dataset indices of view `name`'s rows (views of the same images share `index`)."""
        if name in self.view_index:
            return self.view_index[name]
        known = name == "x" or (name in self.views and self.groups is None)
        if self.index is None or not known:
            raise KeyError(f"the rows of view {name!r} are not dataset images with known indices")
        return self.index

    def targets_of(self, name: str = "x") -> Tensor:
        return self.view_targets.get(name, self.targets)


@dataclass
class StepInfo:
    """Where training stands; methods use it for warm-up ramps (DKD, ReviewKD)."""

    epoch: int  # 0-based epoch of the current phase
    epochs: int  # epochs in the current phase
    step: int  # optimizer steps taken so far in this phase
    steps_per_epoch: int


@dataclass(frozen=True)
class Binding:
    """Which networks and view a method instance reads, and the namespace of its terms.

    `namespace: peer1` turns the method's term `kd` into `peer1.kd`; `detach_teacher` makes a trainable
    network a teacher whose features give targets but receive no gradient (mutual learning); `teacher_view`
    feeds the teacher another view of the same images than the student."""

    student: str = "student"
    teacher: str = "teacher"
    view: str = "x"
    namespace: str = ""
    detach_teacher: bool = False
    teacher_view: Optional[str] = None  # the teacher reads another view (DS-SRD: KD(s(x), t(x2))); None: view

    @property
    def teacher_input(self) -> str:
        return self.teacher_view or self.view

    def term(self, name: str) -> str:
        return f"{self.namespace}.{name}" if self.namespace else name
