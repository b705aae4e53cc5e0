"""Phases built from bound methods, for any regime: the init stage a method declares (AB, FT, FSP), the main
stage of all methods, and the hooks methods have (bank updates after each step, per-epoch state)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

from kdzoo.distillers import Method
from kdzoo.errors import ConfigError
from kdzoo.models.features import Needs
from kdzoo.program.bundle import (
    Bundle,
    main_body,
    method_step,
    step_sources,
    teacher_views,
)
from kdzoo.program.controllers import constant
from kdzoo.program.epoch_pass import EpochPasses
from kdzoo.program.methods import produced_terms
from kdzoo.program.program import Phase


def needs_by_network(methods: Iterable[Method], always: dict[str, Needs]) -> dict[str, Needs]:
    """The features each network must give: the union of what the methods bound to it ask for."""
    needs = dict(always)
    for m in methods:
        b = m.binding
        needs[b.student] = needs.get(b.student, Needs()) | m.student_needs
        if m.needs_teacher():
            needs[b.teacher] = needs.get(b.teacher, Needs()) | m.teacher_needs
        for network, _, extra in m.extra_reads():
            needs[network] = needs.get(network, Needs()) | extra
    return needs


def method_hooks(methods: Iterable[Method], sources: Optional[Mapping[str, Callable]] = None
                 ) -> tuple[Callable[[], None], Callable[[int, Any], dict[str, float]]]:
    """(after_step, on_epoch_start) calling every method's hook; methods with `epoch_passes` get passes over the
    training images through `sources` (the step's networks by slot name)."""
    methods = list(methods)

    def after_step() -> None:
        for m in methods:
            m.after_step()

    def on_epoch_start(epoch: int, runtime: Any) -> dict[str, float]:
        stats: dict[str, float] = {}
        passes = EpochPasses(runtime, sources or {})
        for m in methods:
            stats.update(m.on_epoch_start(epoch, passes if m.requires.epoch_passes else None) or {})
        return stats

    return after_step, on_epoch_start


def init_phases(methods: dict[str, Method], bundle: Bundle, frozen: dict[str, Callable],
                teacher_first: bool) -> list[Phase]:
    """One phase per declared init stage, in recipe order: its modules at a constant lr, no evaluation."""
    after_step, _ = method_hooks(methods.values())
    phases = []
    for name, method in methods.items():
        stage = method.init_stage()
        if stage is None:
            continue
        body = (lambda m, needs: lambda ctx: m.step_init_losses(ctx, needs))(method, stage.needs_student)
        first = teacher_views([method], frozen) if teacher_first else ()
        phases.append(Phase(name=f"init:{name}", epochs=stage.epochs,
                            params=[p for module in stage.modules for p in module.parameters()],
                            step=method_step(bundle, frozen, body, prefetch=first), weights=stage.weights,
                            controller=constant(stage.epochs), lr=stage.lr, after_step=after_step))
    return phases


def main_phase(methods: dict[str, Method], loss: dict[str, float], bundle: Bundle, frozen: dict[str, Callable],
               teacher_first: bool, epochs: int, **options) -> Phase:
    """Every main-stage method's terms, weighted by the recipe's `loss:`, over all of the bundle's parameters;
    `options` are the Phase's controller, evaluators, select, ..."""
    main = [m for m in methods.values() if m.main_stage]
    weights = {term: w for term, w in loss.items() if term in produced_terms(main)}
    if not any(weights.values()):
        raise ConfigError("loss: no term with a non-zero weight acts in the main stage (add ce)")
    after_step, on_epoch_start = method_hooks(methods.values(), step_sources(bundle, frozen))
    first = teacher_views(main, frozen) if teacher_first else ()
    return Phase(name="main", epochs=epochs, params=list(bundle.parameters()),
                 step=method_step(bundle, frozen, lambda ctx: main_body(ctx, main), prefetch=first),
                 weights=weights, on_epoch_start=on_epoch_start, after_step=after_step,
                 make_optimizer=own_optimizer(main), task_terms=frozenset(
                     m.binding.term(t) for m in main for t in m.task_terms), **options)


def own_optimizer(methods: list[Method]) -> Optional[Callable]:
    """The optimizer factory of the one method that brings its own (DOT), or None."""
    owners = [m for m in methods if type(m).make_optimizer is not Method.make_optimizer]
    if len(owners) > 1:
        raise ConfigError(f"methods: {owners[0].name} and {owners[1].name} each bring their own optimizer step; "
                          "a run takes one")
    return owners[0].make_optimizer if owners else None
