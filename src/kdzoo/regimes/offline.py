"""The default regime: a frozen teacher teaches one student through any weighted set of method terms (also
plain training without a teacher). A short program: two model slots, the recipe's streams, an init phase
per method that declares one (AB, FT, FSP), then the main phase."""
from __future__ import annotations

import json
from typing import Any, Optional

import torch
from torch import nn

from kdzoo.config.validate import to_dict
from kdzoo.core.dist import barrier
from kdzoo.data.info import DatasetInfo
from kdzoo.data.recipe_streams import recipe_streams
from kdzoo.distillers import Method, SetupContext
from kdzoo.errors import ConfigError
from kdzoo.models import FeatureModel, Needs
from kdzoo.models.aux import AuxNet, RotatedHeads
from kdzoo.models.frozen import FrozenTeacher
from kdzoo.models.probe import probe_shapes
from kdzoo.program import Artifact, DataStream, ModelSlot, Program
from kdzoo.program.bundle import Bundle
from kdzoo.program.controllers import controller_for
from kdzoo.program.epoch_pass import attach_probe
from kdzoo.program.evaluators import ClassifierEvaluator, HeadsEvaluator, MetricEvaluator, knn_monitor
from kdzoo.program.methods import build_methods, check_views, method_instances
from kdzoo.program.networks import frozen_teacher, trained_network
from kdzoo.program.phases import init_phases, main_phase, needs_by_network
from kdzoo.program.teacher_cache import CachedTeacher, cache_key, refuse_uncacheable, teacher_cache
from kdzoo.program.teacher_replay import replay_program_parts
from kdzoo.program.train_stream import attach_batch_transform, attach_groups, stream_needs
from kdzoo.regimes.base import BuildContext, Regime, count_params, register_regime

__all__ = ["Offline", "probe_shapes"]


@register_regime
class Offline(Regime):
    name = "offline"
    description = "frozen teacher -> one student (the classic setting; also plain training without a teacher)"

    @classmethod
    def build(cls, ctx: BuildContext) -> Program:
        cfg = ctx.cfg
        streams, info = recipe_streams(cfg.dataset, seed=cfg.seed, device=ctx.device,
                                       channels_last=cfg.engine.channels_last, **train_stream_needs(cfg))
        return offline_program(ctx, streams, info)


def train_stream_needs(cfg) -> dict[str, bool]:
    """What the recipe's methods ask of the training batches: dataset indices, only full batches."""
    return stream_needs(cfg, _method_classes(cfg.loss, cfg.methods))


def _method_classes(loss: dict[str, float], methods_cfg: dict) -> list[type]:
    instances = method_instances(loss)
    for name, section in methods_cfg.items():
        bound = [k for k in ("student", "teacher", "detach_teacher") if k in section]
        if bound:
            raise ConfigError(f"methods.{name}.{bound[0]}: the offline regime binds every method to its student and "
                              "teacher (a regime with several networks takes bindings)")
    namespaced = [name for name, (namespace, _) in instances.items() if namespace]
    if namespaced:
        raise ConfigError(f"loss: {namespaced[0]} is namespaced, but the offline regime trains one student")
    return [c for _, c in instances.values()]


def with_replay(replay_start, inner):
    def on_epoch_start(epoch: int, runtime) -> dict[str, float]:
        return {**replay_start(epoch), **((inner(epoch, runtime) if inner is not None else None) or {})}

    return on_epoch_start


def refuse_teacher_logits(methods: dict[str, Method], checkpoint: str) -> None:
    """A self-supervised teacher's classifier never trained: only its features may teach."""
    reading = [name for name, m in methods.items() if m.reads_teacher_logits()]
    if reading:
        raise ConfigError(f"loss.{reading[0]}: reads the teacher's logits, but {checkpoint} is a self-supervised "
                          "encoder with an untrained classifier; distil its features (crd, fitnet, proto with embed "
                          "pooled or projected, ...)")


def offline_program(ctx: BuildContext, streams: dict[str, DataStream], info: DatasetInfo) -> Program:
    """The program on given streams (`train` and `test`, optionally `val`)."""
    cfg, device = ctx.cfg, ctx.device
    classes = _method_classes(cfg.loss, cfg.methods)
    if cfg.student.cache or cfg.student.cache_dir:
        raise ConfigError("student.cache: only a teacher's outputs can be cached (teacher.cache)")
    if cfg.teacher.cache and not any(c.needs_teacher() for c in classes):
        raise ConfigError("teacher.cache: no method of this recipe reads the teacher")
    viewed = [name for name, section in cfg.methods.items() if isinstance(section, dict) and section.get("teacher_view")]
    if cfg.teacher.cache and viewed:
        raise ConfigError(f"methods.{viewed[0]}.teacher_view: the teacher cache holds one view per image; run the "
                          "teacher live (teacher.cache: false)")
    attach_batch_transform(streams["train"], cfg, classes)
    student, student_spec = trained_network(cfg.student, info, log=ctx.log)
    teacher_model, teacher_meta, teacher_spec = None, None, None
    if any(c.needs_teacher() for c in classes):
        if not cfg.teacher.checkpoint:
            needing = [c.name for c in classes if c.needs_teacher()]
            raise ConfigError(f"teacher.checkpoint: method {needing[0]} needs a teacher checkpoint")
        teacher_model, teacher_meta, teacher_spec = frozen_teacher(cfg.teacher, info)

    sample = streams["test"].sample_input()
    example = torch.stack([sample, sample])
    ss_teacher = bool((teacher_meta or {}).get("self_supervised"))  # its classifier never trained
    setup = SetupContext(
        student=student, teacher=teacher_model,
        student_shapes=probe_shapes(student, student_spec, example),
        teacher_shapes=probe_shapes(teacher_model, teacher_spec, example) if teacher_model else None,
        num_classes=info.num_classes, train_targets=streams["train"].dataset.targets,
        batch_size=cfg.dataset.batch_size, epochs=cfg.epochs, device=device,
        teacher_checkpoint=cfg.teacher.checkpoint, info=info,
        teacher_logits_trained=not ss_teacher)
    networks = ("student", "teacher") if teacher_model is not None else ("student",)
    methods = build_methods(cfg.loss, cfg.methods, lambda binding: setup, networks)
    if ss_teacher:
        refuse_teacher_logits(methods, cfg.teacher.checkpoint)
    sync = lambda: barrier(ctx.dist)  # noqa: E731
    images = streams["train"].dataset  # before any grouping: what a teacher cache covers
    attach_groups(streams["train"], methods, cfg.seed, ctx.out, ctx.log, ctx.dist.is_main, sync)
    check_views(methods, streams["train"].views)
    # no method reads labels (crd with instance negatives, proto from a self-supervised teacher): the classifier
    # never trains, so a kNN monitor of the pooled features picks nothing; the last checkpoint is the result
    label_free = not any(m.reads_labels() for m in methods.values())
    attach_probe(streams, methods.values(), cfg, device, always=label_free)

    needs = needs_by_network(methods.values(), {"student": Needs(logits=True, pooled=label_free)})
    memory_format = torch.channels_last if cfg.engine.channels_last else torch.contiguous_format
    frozen: dict[str, Any] = {}
    models = {}
    replay_start = None
    if teacher_model is not None:
        teacher = FrozenTeacher(teacher_model, needs.get("teacher", Needs()), teacher_spec).to(
            device, memory_format=memory_format)
        if cfg.teacher.cache == "replay":
            source, replay_start = replay_program_parts(cfg, streams, methods, teacher, info, device, ctx.out,
                                                           ctx.dist.is_main, ctx.log)
            frozen["teacher"] = source
            models["teacher"] = ModelSlot(teacher.model, role="cached", features=source)
        elif cfg.teacher.cache:
            refuse_uncacheable(methods)
            d = cfg.dataset
            pipeline = json.dumps({"augment": d.augment, "image_size": d.image_size, "views": d.views})
            key = cache_key(cfg.teacher.checkpoint, images, cfg.seed, needs.get("teacher", Needs()), info.name,
                            pipeline)
            outputs = teacher_cache(teacher, images, key, cfg.teacher.cache_dir or ctx.out, cfg.seed,
                                    d.eval_batch_size, device, ctx.log, ctx.dist.is_main, sync,
                                    progress=cfg.engine.progress, shared=cfg.teacher.cache_dir is not None)
            frozen["teacher"] = CachedTeacher(outputs, device)
            models["teacher"] = ModelSlot(teacher.model, role="cached", features=frozen["teacher"])
        else:
            frozen["teacher"] = teacher
            models["teacher"] = ModelSlot(teacher.model, role="frozen", features=teacher)
    bundle = Bundle({"student": FeatureModel(student, needs["student"], student_spec)}, methods).to(
        device, memory_format=memory_format)
    models["student"] = ModelSlot(student, features=bundle.student)

    plain = student.deploy_module() if hasattr(student, "deploy_module") else student  # a _trans model's CNN
    wrapped = _inference_wrapper(methods.values(), plain)
    deployed = (lambda: wrapped[0]) if wrapped else (lambda: plain)
    evaluators = [ClassifierEvaluator(deployed, stream) for stream in ("val", "test") if stream in streams]
    at_best = [evaluators.pop()] if "val" in streams else []  # test only where val reaches a new best
    select = "val_top1" if "val" in streams else "test_top1"
    if label_free:
        evaluators, at_best, select = [MetricEvaluator(knn_monitor(bundle.student))], [], "test_knn_top1"
    if isinstance(student, AuxNet) and student.num_heads and info.image_size is not None:  # square images
        heads = RotatedHeads(student)  # each head's accuracy beside the backbone's (HSAKD's teacher log)
        evaluators.append(HeadsEvaluator(lambda: heads, stream="test", rows_per_sample=4))
        if "aux_ce" in cfg.loss and "val" not in streams:  # training the heads (an HSAKD teacher): HSAKD keeps
            select = "test_heads_top1"  # the epoch of its best head (train_teacher_cifar.py), not of the backbone
    phases = init_phases(methods, bundle, frozen, cfg.engine.teacher_first)
    phases.append(main_phase(methods, cfg.loss, bundle, frozen, cfg.engine.teacher_first, cfg.epochs,
                             controller=controller_for(cfg.schedule, cfg.epochs), evaluators=evaluators, at_best=at_best,
                             select=select))
    if replay_start is not None:  # the replayed epoch's draws and soft labels before the methods' own hooks
        phases[-1].on_epoch_start = with_replay(replay_start, phases[-1].on_epoch_start)

    def deploy_meta() -> dict[str, Any]:
        arch = student.plain_arch if plain is not student else cfg.student.arch
        meta = {"arch": arch, "num_classes": info.num_classes, "in_channels": info.in_channels}
        if label_free:
            meta["self_supervised"] = True  # its classifier never trained: linear-eval probes the last weights
        if wrapped:
            meta["wrapper"] = {"method": wrapped[1].name, **wrapped[1].inference_meta()}
        return meta

    def describe() -> dict[str, Any]:
        out = {"student": cfg.student.arch, "student_params": count_params(student),
               "adapter_params": count_params(bundle.methods),
               "methods": {name: to_dict(m.params) for name, m in methods.items()}}
        if teacher_model is not None:
            out.update(teacher=teacher_meta.get("arch"), teacher_params=count_params(models["teacher"].module),
                       teacher_cached=cfg.teacher.cache)
        return out

    return Program(models=models, data=streams, phases=phases, trainable=bundle, info=info,
                   artifacts={"student": Artifact(deployed, deploy_meta)}, describe=describe)


def _inference_wrapper(methods, student: nn.Module) -> Optional[tuple[nn.Module, Method]]:
    """What a method deploys instead of the bare student (SimKD: projector + teacher head), if any."""
    for method in methods:
        wrapper = method.inference_wrapper(student)
        if wrapper is not None:
            return wrapper, method
    return None
