"""The trainable side of a program as one module (so DDP can wrap it and one state_dict resumes it): the
trainable networks, each under its slot name, and the bound method instances. A step runs inside its
forward, so every trainable forward a method asks for happens under DDP."""
from __future__ import annotations

from typing import Callable, Iterable

from torch import Tensor, nn

from kdzoo.core.batch import Batch, StepInfo
from kdzoo.distillers import Method
from kdzoo.distillers.context import StepContext
from kdzoo.program.methods import module_key

StepBody = Callable[[StepContext], dict[str, Tensor]]


class Bundle(nn.Module):
    def __init__(self, nets: dict[str, nn.Module], methods: dict[str, Method]):
        super().__init__()
        self.net_names = tuple(nets)
        for name, net in nets.items():
            self.add_module(name, net)
        self.methods = nn.ModuleDict({module_key(k): m for k, m in methods.items()})

    def method_list(self) -> list[Method]:
        return list(self.methods.values())

    @property
    def runner(self) -> nn.Module:
        """What a step's body runs under: the bundle itself, or the DDP wrapper the engine placed around it."""
        return self.__dict__.get("_runner") or self

    def use_runner(self, runner: nn.Module) -> None:
        self.__dict__["_runner"] = runner  # a plain attribute: the wrapper holds the bundle, not the other way

    def forward(self, ctx: StepContext, body: StepBody) -> dict[str, Tensor]:
        # DDP must see the step's forward (it syncs gradients of what ran inside it): the body runs in here
        return body(ctx)


def main_body(ctx: StepContext, methods: list[Method]) -> dict[str, Tensor]:
    """The main stage: every method's terms, in recipe order."""
    terms: dict[str, Tensor] = {}
    for method in methods:
        if method.main_stage:
            terms.update(method.step_losses(ctx))
    return terms


def teacher_views(methods: Iterable[Method], frozen: Iterable[str]) -> list[tuple[str, str]]:
    """The (frozen teacher, view) pairs the methods read, in order: what a step may compute first."""
    frozen, pairs = set(frozen), []
    for m in methods:
        for view in m.teacher_views():
            pair = (m.binding.teacher, view)
            if m.needs_teacher() and pair[0] in frozen and pair not in pairs:
                pairs.append(pair)
    return pairs


def step_sources(bundle: Bundle, frozen: dict[str, Callable]) -> dict[str, Callable]:
    """The networks a step (or a per-epoch pass) reads, by slot name: the bundle's trainable ones, the frozen ones."""
    return {**{name: getattr(bundle, name) for name in bundle.net_names}, **frozen}


def method_step(bundle: Bundle, frozen: dict[str, Callable], body: StepBody,
                prefetch: Iterable[tuple[str, str]] = ()) -> Callable[[Batch, StepInfo], dict[str, Tensor]]:
    """A phase step: a StepContext over the bundle's networks and the frozen ones; the (frozen network, view)
    pairs in `prefetch` run first (under inference_mode, outside DDP: less live memory), then `body` under
    the bundle's runner (the bundle, DDP-wrapped when distributed)."""
    prefetch = list(prefetch)
    sources = step_sources(bundle, frozen)

    def step(batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        return run_step(StepContext(batch, info, sources), bundle, body, prefetch)

    return step


def run_step(ctx: StepContext, bundle: Bundle, body: StepBody, prefetch: Iterable[tuple[str, str]]
             ) -> dict[str, Tensor]:
    """One step in `ctx`: the prefetched (frozen network, view) pairs first, then `body` under the bundle's runner."""
    for name, view in prefetch:
        ctx.features(name, view)
    return bundle.runner(ctx, body)


