"""The default regime: a frozen teacher teaches one student through any weighted set of method terms (also
plain training without a teacher). Two networks; the assembler adds init phases (AB, FT, FSP), grouped batches
(CKD, mixup) and a cached or replayed teacher (`teacher.cache`)."""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from kdzoo.distillers import Method
from kdzoo.errors import ConfigError
from kdzoo.models import Needs
from kdzoo.models.aux import AuxNet, RotatedHeads
from kdzoo.program.assemble import (
    Built,
    Hosts,
    Net,
    Outputs,
    Regime,
    assemble,
    count_params,
)
from kdzoo.program.evaluators import (
    ClassifierEvaluator,
    HeadsEvaluator,
    MetricEvaluator,
    knn_monitor,
)
from kdzoo.program.methods import method_instances
from kdzoo.program.networks import frozen_teacher, trained_network
from kdzoo.program.program import Artifact, BuildContext, Program
from kdzoo.regimes.base import register_regime


@register_regime
class Offline(Regime):
    name = "offline"
    description = "frozen teacher -> one student (the classic setting; also plain training without a teacher)"
    command = "distill"
    verb_follows_teacher = True
    hosts = Hosts(groups=True, init_stages=True, teacher_cache=True)

    @classmethod
    def check(cls, cfg) -> None:
        for name, section in cfg.methods.items():
            bound = [k for k in ("student", "teacher", "detach_teacher") if k in section]
            if bound:
                raise ConfigError(f"methods.{name}.{bound[0]}: the offline regime binds every method to its student "
                                  "and teacher (a regime with several networks takes bindings)")
        instances = method_instances(cfg.loss)
        namespaced = [name for name, (namespace, _) in instances.items() if namespace]
        if namespaced:
            raise ConfigError(f"loss: {namespaced[0]} is namespaced, but the offline regime trains one student")
        if cfg.student.cache or cfg.student.cache_dir:
            raise ConfigError("student.cache: only a teacher's outputs can be cached (teacher.cache)")
        needing = [c.name for _, c in instances.values() if c.needs_teacher()]
        if cfg.teacher.cache and not needing:
            raise ConfigError("teacher.cache: no method of this recipe reads the teacher")
        viewed = [k for k, section in cfg.methods.items() if isinstance(section, dict) and section.get("teacher_view")]
        if cfg.teacher.cache and viewed:
            raise ConfigError(f"methods.{viewed[0]}.teacher_view: the teacher cache holds one view per image; run the "
                              "teacher live (teacher.cache: false)")
        if needing and not cfg.teacher.checkpoint:
            raise ConfigError(f"teacher.checkpoint: method {needing[0]} needs a teacher checkpoint")

    @classmethod
    def networks(cls, ctx: BuildContext, info, streams) -> dict[str, Net]:
        cfg = ctx.cfg
        student, spec = trained_network(cfg.student, info, log=ctx.log)
        nets = {"student": Net(student, spec=spec, always=Needs(logits=True))}
        if any(c.needs_teacher() for _, c in method_instances(cfg.loss).values()):
            teacher, meta, teacher_spec = frozen_teacher(cfg.teacher, info)
            nets["teacher"] = Net(teacher, role="frozen", spec=teacher_spec, extra=meta,
                                  logits_trained=not meta.get("self_supervised"))
        return nets

    @classmethod
    def check_methods(cls, cfg, methods: dict[str, Method], nets: dict[str, Net]) -> None:
        teacher = nets.get("teacher")
        reading = [name for name, m in methods.items() if m.reads_teacher_logits()]
        if teacher is not None and not teacher.logits_trained and reading:
            raise ConfigError(f"loss.{reading[0]}: reads the teacher's logits, but {cfg.teacher.checkpoint} is a "
                              "self-supervised encoder with an untrained classifier; distil its features (crd, fitnet, "
                              "proto with embed pooled or projected, ...)")

    @classmethod
    def outputs(cls, built: Built) -> Outputs:
        cfg, info, streams, methods = built.cfg, built.info, built.streams, built.methods
        student = built.nets["student"].module
        plain = student.deploy_module() if hasattr(student, "deploy_module") else student  # a _trans model's CNN
        wrapped = _inference_wrapper(methods.values(), plain)
        deployed = (lambda: wrapped[0]) if wrapped else (lambda: plain)
        evaluators = [ClassifierEvaluator(deployed, stream) for stream in ("val", "test") if stream in streams]
        at_best = [evaluators.pop()] if "val" in streams else []  # test only where val reaches a new best
        select = "val_top1" if "val" in streams else "test_top1"
        if built.label_free:  # no term reads labels: the classifier never trains; a kNN monitor watches the run
            evaluators, at_best, select = [MetricEvaluator(knn_monitor(built.bundle.student))], [], "test_knn_top1"
        if isinstance(student, AuxNet) and student.num_heads and info.image_size is not None:  # square images
            heads = RotatedHeads(student)  # each head's accuracy beside the backbone's (HSAKD's teacher log)
            evaluators.append(HeadsEvaluator(lambda: heads, stream="test", rows_per_sample=4))
            chosen = next((m.selects for m in methods.values() if m.selects), None)
            if chosen and "val" not in streams:  # a term training the heads selects on them (an HSAKD teacher)
                select = f"test_{chosen}"

        def deploy_meta() -> dict[str, Any]:
            arch = student.plain_arch if plain is not student else cfg.student.arch
            meta = {"arch": arch, "num_classes": info.num_classes, "in_channels": info.in_channels}
            if built.label_free:
                meta["self_supervised"] = True  # its classifier never trained: linear-eval probes the last weights
            if wrapped:
                meta["wrapper"] = {"method": wrapped[1].name, **wrapped[1].inference_meta()}
            return meta

        def describe() -> dict[str, Any]:
            out = {"student": cfg.student.arch, "student_params": count_params(student),
                   "adapter_params": count_params(built.bundle.methods), "methods": built.method_params()}
            teacher = built.nets.get("teacher")
            if teacher is not None:
                out.update(teacher=teacher.extra.get("arch"), teacher_params=count_params(teacher.module),
                           teacher_cached=cfg.teacher.cache)
            return out

        return Outputs(evaluators, {"student": Artifact(deployed, deploy_meta)}, select, at_best, describe)


def train_stream_needs(cfg) -> dict[str, bool]:
    """What the recipe's methods ask of the training batches: dataset indices, only full batches."""
    Offline.check(cfg)
    return Offline.stream_options(cfg, [c for _, c in method_instances(cfg.loss).values()])


def offline_program(ctx: BuildContext, streams: dict, info) -> Program:
    """The offline program on given streams (`train`, `test`, optionally `val`), e.g. synthetic ones."""
    return assemble(Offline, ctx, given=(streams, info))


def _inference_wrapper(methods, student: nn.Module) -> Optional[tuple[nn.Module, Method]]:
    """What a method deploys instead of the bare student (SimKD: projector + teacher head), if any."""
    for method in methods:
        wrapper = method.inference_wrapper(student)
        if wrapper is not None:
            return wrapper, method
    return None
