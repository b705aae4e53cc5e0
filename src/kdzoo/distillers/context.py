"""What a method sees in a training step: the batch, where training stands, and the networks' features,
computed on demand and once per (network, view), so that two methods asking for the student's features of the
same view cost one forward."""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
from torch import Tensor

from kdzoo.core.batch import Batch, Binding, StepInfo
from kdzoo.models.features import Features


class StepContext:
    """`features(model, view)`: the features of network `model` (a slot name) on view `view` of the batch; a
    frozen network runs under inference_mode, a trainable one builds its graph. `no_grad_features` is the
    same forward without a graph (scoring passes), memoised apart."""

    def __init__(self, batch: Batch, info: StepInfo, sources: Mapping[str, Callable[[Tensor], Features]]):
        self.batch, self.info = batch, info
        self._sources = sources
        self._cache: dict[tuple[str, str, bool], Features] = {}
        self._derived: dict[str, Tensor] = {}

    def add_view(self, name: str, inputs: Tensor) -> str:
        """A view a method derives inside the step (augmented or mixed copies of the batch); the networks'
        features of it are then memoised like any other view's. Its rows are not dataset images."""
        if name in self._derived or name in self.batch.views:
            raise KeyError(f"view {name!r} exists already in this step")
        self._derived[name] = inputs
        return name

    def has(self, model: str) -> bool:
        return model in self._sources

    def features(self, model: str = "student", view: str = "x") -> Features:
        key = (model, view, True)
        if key not in self._cache:
            self._cache[key] = self._run(model, view)
        return self._cache[key]

    def cached(self, model: str = "student", view: str = "x") -> Optional[Features]:
        """The features of (model, view) this step computed with a graph, or None (no forward is run)."""
        return self._cache.get((model, view, True))

    def no_grad_features(self, model: str = "student", view: str = "x", keep_statistics: bool = False) -> Features:
        """Features without a graph (a forward the step already made is reused, detached). keep_statistics: a
        network in training mode leaves its BatchNorm statistics as they were (a scoring pass, not training)."""
        if (model, view, True) in self._cache:
            return self._cache[(model, view, True)].map(Tensor.detach)
        key = (model, view, False)
        if key not in self._cache:
            source = self._source(model)
            kept = _buffers(source) if keep_statistics else None
            with torch.no_grad():
                self._cache[key] = self._run(model, view)
                for buffer, value in kept or ():
                    buffer.data.copy_(value)  # as BN's own update: no version bump for saved graphs
        return self._cache[key]

    def _run(self, model: str, view: str) -> Features:
        source = self._source(model)
        if view in self._derived:
            if getattr(source, "reads_batch", False):
                raise KeyError(f"network {model!r} reads cached outputs of dataset images; view {view!r} is "
                               "derived in the step (run that network live)")
            return source(self._derived[view])
        if getattr(source, "reads_batch", False):  # e.g. cached teacher outputs, looked up by dataset index
            return source.from_batch(self.batch, view)
        return source(self.batch.view(view))

    def teacher_features(self, binding: Binding) -> Features:
        feats = self.features(binding.teacher, binding.teacher_input)
        return feats.map(Tensor.detach) if binding.detach_teacher else feats

    def _source(self, model: str) -> Callable[[Tensor], Features]:
        try:
            return self._sources[model]
        except KeyError:
            raise KeyError(f"no network named {model!r} in this step (networks: {', '.join(self._sources)})") \
                from None


def _buffers(source) -> list[tuple[Tensor, Tensor]]:
    """(buffer, copy) of every buffer of a network in training mode (BN statistics a forward would move)."""
    if not isinstance(source, torch.nn.Module) or not source.training:
        return []
    return [(b, b.detach().clone()) for b in source.buffers()]
