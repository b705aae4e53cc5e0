"""DS-SRD's double student: a weak student (the recipe's `student`, what deploys) learns from a teacher that is
itself moving: after every optimizer step the teacher's parameters become an EMA (0.99) of a strong student.

- `strong`: the teacher's architecture, started from the teacher's checkpoint (the DS-SRD release builds it
  from scratch and never optimises it, so its "teacher" drifts toward a random network; we start both from the
  checkpoint so the EMA teacher stays a trained network), plus a prediction head on its logits, Linear(C, F) ->
  BN -> ReLU -> Linear(F, C) -> BN with F the width of its pooled feature (read from the feature spec, so any
  zoo arch works). It trains with the recipe's `strong.*` terms, typically `strong.mixup_ce`.
- `teacher`: the checkpoint, then teacher <- 0.99 teacher + 0.01 strong, parameters and BN statistics alike
  (`double_student.ema_buffers: ema`; DS-SRD's code keeps the teacher's own statistics, `keep`, which go stale
  as its weights move). Eval mode, no gradients.
- `student`: the weak student with every other term (ce, kd with `teacher_view: x2`, crd, proto, ...).
- `mean_student` (double_student.mean_student): an EMA of the weak student, a key network for proto.

All three (four) networks resume exactly: the strong and weak students and the head are the trainable bundle,
the teacher and mean student are EMA slots in the resume state. Artifacts: the weak student, and the teacher.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from kdzoo.config.validate import to_dict
from kdzoo.data.recipe_streams import recipe_streams
from kdzoo.distillers import SetupContext
from kdzoo.errors import ConfigError, KdzooError
from kdzoo.models import FeatureModel, Needs, create_model
from kdzoo.models.features import Features
from kdzoo.models.frozen import FrozenTeacher
from kdzoo.models.probe import probe_shapes
from kdzoo.program import Artifact, ModelSlot, Program
from kdzoo.program.bundle import Bundle
from kdzoo.program.controllers import controller_for
from kdzoo.program.epoch_pass import attach_probe
from kdzoo.program.evaluators import ClassifierEvaluator
from kdzoo.program.methods import build_methods, check_hosted, check_views, method_instances
from kdzoo.program.networks import frozen_teacher, trained_network
from kdzoo.program.phases import main_phase, needs_by_network
from kdzoo.program.train_stream import attach_batch_transform, stream_needs
from kdzoo.regimes.base import BuildContext, Regime, count_params, register_regime

NETWORKS = ("student", "strong", "teacher", "mean_student")


class PredictionHead(nn.Sequential):
    """DS-SRD's head on the strong student's logits: Linear(C, F), BN, ReLU, Linear(F, C), BN."""

    def __init__(self, num_classes: int, width: int):
        super().__init__(nn.Linear(num_classes, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
                         nn.Linear(width, num_classes), nn.BatchNorm1d(num_classes))


class WithHead(nn.Module):
    """A network's features with its logits passed through a head (the other features are the network's)."""

    def __init__(self, features: FeatureModel, head: nn.Module):
        super().__init__()
        self.features, self.head = features, head

    def forward(self, x: Tensor) -> Features:
        feats = self.features(x)
        return replace(feats, logits=self.head(feats.logits))


@register_regime
class DoubleStudent(Regime):
    name = "double_student"
    description = "DS-SRD: weak student <- EMA teacher of a strong student (teacher arch + head, mixup CE)"

    @classmethod
    def build(cls, ctx: BuildContext) -> Program:
        cfg, device = ctx.cfg, ctx.device
        classes = [c for _, c in method_instances(cfg.loss).values()]
        needs = {**stream_needs(cfg, classes), "drop_last": True}  # the head's BatchNorm1d needs 2+ rows
        streams, info = recipe_streams(cfg.dataset, seed=cfg.seed, device=device,
                                       channels_last=cfg.engine.channels_last, **needs)
        if not cfg.teacher.checkpoint:
            raise ConfigError("teacher.checkpoint: the double_student regime starts its teacher and strong student "
                              "from a trained teacher")
        if cfg.teacher.cache:
            raise ConfigError("teacher.cache: the double_student teacher changes every step; it cannot be cached")
        attach_batch_transform(streams["train"], cfg, classes)
        teacher_model, teacher_meta, teacher_spec = frozen_teacher(cfg.teacher, info)
        arch = teacher_meta["arch"]
        try:
            strong_net = create_model(arch, num_classes=info.num_classes, in_channels=info.in_channels)
        except KdzooError as err:
            raise ConfigError(f"teacher: the double_student regime builds a strong student of the teacher's "
                              f"architecture {arch!r}, which the zoo cannot build ({err})") from None
        try:
            strong_net.load_state_dict(teacher_model.state_dict())
        except RuntimeError:
            raise ConfigError(f"teacher: {cfg.teacher.checkpoint} does not load into a plain {arch} (a teacher saved "
                              "with an inference wrapper cannot start the strong student)") from None
        student, student_spec = trained_network(cfg.student, info, log=ctx.log)

        sample = streams["test"].sample_input()
        example = torch.stack([sample, sample])
        shapes = {"student": probe_shapes(student, student_spec, example),
                  "teacher": probe_shapes(teacher_model, teacher_spec, example)}
        if shapes["teacher"].pooled is None:
            raise ConfigError(f"teacher: {arch} gives no pooled feature; the strong student's head needs its width")
        width = int(shapes["teacher"].pooled[-1])
        head = PredictionHead(info.num_classes, width) if cfg.double_student.head else nn.Identity()
        shapes["strong"] = replace(shapes["teacher"])
        shapes["mean_student"] = shapes["student"]
        nets = {"student": student, "strong": strong_net, "teacher": teacher_model}
        mean_wanted = cfg.double_student.mean_student
        if mean_wanted:
            nets["mean_student"] = student  # stands in for its EMA (same architecture) while methods are built

        def setup(binding) -> SetupContext:
            return SetupContext(student=nets[binding.student], teacher=nets.get(binding.teacher),
                                student_shapes=shapes[binding.student], teacher_shapes=shapes.get(binding.teacher),
                                num_classes=info.num_classes, train_targets=streams["train"].dataset.targets,
                                batch_size=cfg.dataset.batch_size, epochs=cfg.epochs, device=device,
                                teacher_checkpoint=cfg.teacher.checkpoint, info=info)

        methods = build_methods(cfg.loss, cfg.methods, setup, nets)
        check_hosted(methods, "double_student")
        for instance, m in methods.items():
            if m.binding.student in ("teacher", "mean_student"):
                raise ConfigError(f"methods.{instance}.student: {m.binding.student} is an EMA, not trained by terms")
        check_views(methods, streams["train"].views)
        attach_probe(streams, methods.values(), cfg, device)

        needs = needs_by_network(methods.values(), {"student": Needs(logits=True), "strong": Needs(logits=True)})
        memory_format = torch.channels_last if cfg.engine.channels_last else torch.contiguous_format
        strong = WithHead(FeatureModel(strong_net, needs["strong"], teacher_spec), head)
        bundle = Bundle({"student": FeatureModel(student, needs["student"], student_spec), "strong": strong},
                        methods).to(device, memory_format=memory_format)
        decay = cfg.double_student.ema_decay
        frozen: dict[str, Any] = {"teacher": FrozenTeacher(teacher_model, needs.get("teacher", Needs()),
                                                           teacher_spec).to(device, memory_format=memory_format)}
        models = {"student": ModelSlot(student, features=bundle.student),
                  "strong": ModelSlot(strong_net, features=bundle.strong),
                  "teacher": ModelSlot(teacher_model, role="ema", ema_of="strong", ema_decay=decay,
                                       ema_buffers=cfg.double_student.ema_buffers, features=frozen["teacher"])}
        if mean_wanted:
            mean = copy.deepcopy(student)
            frozen["mean_student"] = FrozenTeacher(mean, needs.get("mean_student", Needs()), student_spec)
            models["mean_student"] = ModelSlot(mean, role="ema", ema_of="student", starts_as_source=True,
                                               ema_decay=cfg.double_student.mean_decay, features=frozen["mean_student"])
        deployed = student.deploy_module() if hasattr(student, "deploy_module") else student  # a _trans CNN
        deployed_arch = student.plain_arch if deployed is not student else cfg.student.arch
        evaluators = [ClassifierEvaluator(lambda: deployed, stream) for stream in ("val", "test") if stream in streams]
        at_best = [evaluators.pop()] if "val" in streams else []
        report = "val" if "val" in streams else "test"  # how the moving teacher fares: test_teacher_top1
        evaluators.append(ClassifierEvaluator(lambda: teacher_model, report, name="teacher"))
        phase = main_phase(methods, cfg.loss, bundle, frozen, cfg.engine.teacher_first, cfg.epochs,
                           controller=controller_for(cfg.schedule, cfg.epochs), evaluators=evaluators,
                           at_best=at_best, select="val_top1" if "val" in streams else "test_top1")

        def meta(arch_name: str):
            return lambda: {"arch": arch_name, "num_classes": info.num_classes, "in_channels": info.in_channels}

        def describe() -> dict[str, Any]:
            return {"student": cfg.student.arch, "student_params": count_params(student), "teacher": arch,
                    "strong_params": count_params(strong_net), "head_params": count_params(head),
                    "teacher_params": count_params(teacher_model), "adapter_params": count_params(bundle.methods),
                    "ema_decay": decay, "methods": {name: to_dict(m.params) for name, m in methods.items()}}

        return Program(models=models, data=streams, phases=[phase], trainable=bundle, info=info,
                       artifacts={"student": Artifact(lambda: deployed, meta(deployed_arch)),
                                  "teacher": Artifact(lambda: teacher_model, meta(arch))},
                       describe=describe)
