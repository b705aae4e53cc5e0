"""The method instances a recipe calls for: one per (namespace, method) among the loss terms, with its
parameters from `methods:` and its binding (which networks and view it reads).

    loss: {ce: 1, kd: 1}                               -> ce, kd on student/teacher
    loss: {peer0.ce: 1, peer0.kd: 1, peer1.kd: 1}      -> peer0.ce, peer0.kd, peer1.kd
    methods: {peer0.kd: {teacher: peer1, detach_teacher: true, T: 3}}

An instance's parameters are those of `methods.<method>` updated by `methods.<namespace>.<method>`; the keys
student, teacher, view and detach_teacher are its binding (default: student = the namespace or "student",
teacher = "teacher", view = "x").
"""
from __future__ import annotations

from dataclasses import fields
from typing import Callable, Iterable, Optional

from kdzoo.config.validate import from_dict
from kdzoo.core.batch import Binding
from kdzoo.distillers import METHODS, Method, SetupContext, method_for_term
from kdzoo.distillers.registry import split_term
from kdzoo.errors import ConfigError

BINDING_KEYS = tuple(f.name for f in fields(Binding) if f.name != "namespace")


def method_instances(loss: dict[str, float], methods_cfg: Optional[dict] = None) -> dict[str, tuple[str, type]]:
    """{instance: (namespace, method class)} for the terms with a non-zero weight, in recipe order, then the
    methods without loss terms that `methods:` names (DOT)."""
    found: dict[str, tuple[str, type]] = {}
    for term, weight in loss.items():
        cls = method_for_term(term)
        namespace = split_term(term)[0]
        if weight != 0:
            found.setdefault(f"{namespace}.{cls.name}" if namespace else cls.name, (namespace, cls))
    if not found:
        raise ConfigError("loss: every term has weight 0; nothing to train")
    for key in flat_sections(methods_cfg or {}):
        namespace, name = split_term(key)
        if name in METHODS and METHODS.get(name).term_names() == ():
            found.setdefault(key, (namespace, METHODS.get(name)))
    return found


def flat_sections(methods_cfg: dict) -> dict:
    """`{peer1: {kd: {...}}}` (what the dotted override methods.peer1.kd.T=2 writes) -> `{peer1.kd: {...}}`."""
    flat = {}
    for key, value in methods_cfg.items():
        if key not in METHODS and isinstance(value, dict) and value and all(
                k in METHODS and isinstance(v, dict) for k, v in value.items()):
            flat.update({f"{key}.{name}": section for name, section in value.items()})
        else:
            flat[key] = value
    return flat


def check_method_sections(methods_cfg: dict, instances: dict[str, tuple[str, type]], loss: dict) -> None:
    for key in flat_sections(methods_cfg):
        namespace, name = split_term(key)
        METHODS.get(name)  # raises "unknown method"
        terms = METHODS.get(name).term_names()
        if terms == ():  # a method without loss terms is asked for by its section alone
            continue
        if not any(split_term(t)[1] in terms and (not namespace or split_term(t)[0] == namespace) for t in loss):
            if namespace:
                spaces = sorted({split_term(t)[0] for t in loss if split_term(t)[0]})
                raise ConfigError(f"methods.{key}: no loss term of method {name} in namespace {namespace} "
                                  f"(namespaces in loss: {', '.join(spaces) or 'none'})")
            raise ConfigError(f"methods.{key}: parameters given, but no loss term uses method {name}")


def check_views(methods: dict[str, Method], views: Iterable[str]) -> None:
    """Every method reads a view the training batches carry."""
    views = tuple(views)
    for instance, m in methods.items():
        read = [(f".{key}", getattr(m.binding, key)) for key in ("view", "teacher_view")]
        read += [(f" (network {m.binding.teacher})", view) for view in (m.teacher_views() if m.needs_teacher() else ())]
        read += [(f" (network {network})", view) for network, view, _ in m.extra_reads()]
        for where, view in read:
            if view is not None and view not in views:
                raise ConfigError(f"methods.{instance}{where}: the training batches have no view {view!r} "
                                  f"(views: {', '.join(views)}; name more under dataset.views)")


def check_features(instance: str, cls: type, binding: Binding, setup: SetupContext) -> None:
    """The networks a method binds give the features it reads (e.g. stage maps: not a projected encoder's)."""
    sides = [("student", cls.student_needs, setup.student_shapes)]
    if cls.needs_teacher():
        sides.append(("teacher", cls.teacher_needs, setup.teacher_shapes))
    for role, needs, shapes in sides:
        if shapes is None:
            continue
        lacking = [f.name for f in fields(needs) if getattr(needs, f.name) and not getattr(shapes, f.name)]
        if lacking:
            what = "the auxiliary heads (an _aux or _trans model has them)" if lacking[0] == "heads" else \
                f"the {lacking[0]} features"
            raise ConfigError(f"loss: {instance} reads {what} of network {getattr(binding, role)}, which gives none "
                              "here")


def binding_for(instance: str, namespace: str, section: dict) -> Binding:
    values = {k: section[k] for k in BINDING_KEYS if k in section}
    for key, value in values.items():
        if not isinstance(value, str if key != "detach_teacher" else bool):
            raise ConfigError(f"methods.{instance}.{key}: expected a {'name' if key != 'detach_teacher' else 'bool'}"
                              f", got {value!r}")
    values.setdefault("student", namespace or "student")
    return Binding(namespace=namespace, **values)


def build_methods(loss: dict[str, float], methods_cfg: dict, setup_for: Callable[[Binding], SetupContext],
                  networks: Iterable[str]) -> dict[str, Method]:
    """Every method instance of the recipe, constructed and bound; `networks` are the slot names it may bind."""
    instances = method_instances(loss, methods_cfg)
    methods_cfg = flat_sections(methods_cfg)
    check_method_sections(methods_cfg, instances, loss)
    networks = set(networks)
    built: dict[str, Method] = {}
    for instance, (namespace, cls) in instances.items():
        section = {**methods_cfg.get(cls.name, {}), **(methods_cfg.get(instance, {}) if namespace else {})}
        binding = binding_for(instance, namespace, section)
        for role in ("student", "teacher") if cls.needs_teacher() else ("student",):
            if getattr(binding, role) not in networks:
                raise ConfigError(f"methods.{instance}.{role}: no network named {getattr(binding, role)!r} "
                                  f"(networks: {', '.join(sorted(networks))})")
        params = from_dict(cls.Params, {k: v for k, v in section.items() if k not in BINDING_KEYS},
                           f"methods.{instance}")
        setup = setup_for(binding)
        check_features(instance, cls, binding, setup)
        built[instance] = method = cls(params, setup).bind(binding)
        for network, _, _ in method.extra_reads():
            if network not in networks:
                raise ConfigError(f"methods.{instance}: reads network {network!r}, which this run does not have "
                                  f"(networks: {', '.join(sorted(networks))})")
    return built


def produced_terms(methods: Iterable[Method], main: bool = True) -> set[str]:
    return {m.binding.term(t) for m in methods if m.main_stage or not main for t in m.term_names()}


def module_key(instance: str) -> str:
    """ModuleDict keys may not hold dots: "peer1.kd" is kept as "peer1:kd"."""
    return instance.replace(".", ":")
