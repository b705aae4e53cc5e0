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
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kdzoo.errors import ConfigError, KdzooError
from kdzoo.models import FeatureModel, Needs, create_model
from kdzoo.models.features import Features
from kdzoo.models.probe import probe_shapes
from kdzoo.program.assemble import Built, Hosts, Net, Outputs, Regime, count_params
from kdzoo.program.evaluators import ClassifierEvaluator
from kdzoo.program.networks import frozen_teacher, trained_network
from kdzoo.program.program import Artifact, BuildContext
from kdzoo.regimes.base import register_regime

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


@dataclass
class DoubleStudentParams:
    """A strong student of the teacher's architecture (from the teacher's checkpoint) with a prediction head;
    the teacher becomes an EMA of it after every step."""

    ema_decay: float = field(default=0.99, metadata={"ge": 0, "le": 1})  # teacher <- d * teacher + (1 - d) * strong
    # the teacher's BN statistics: averaged like its weights (ema), copied from the strong student (copy), or its
    # own (keep, as DS-SRD's code: they go stale as the weights move; on Fashion-MNIST its teacher fell to 74%)
    ema_buffers: Literal["ema", "copy", "keep"] = "ema"
    head: bool = True  # the prediction head on the strong student's logits
    mean_student: bool = False  # also keep `mean_student`, an EMA of the weak student (a key network)
    mean_decay: float = field(default=0.99, metadata={"ge": 0, "le": 1})


@register_regime
class DoubleStudent(Regime):
    name = "double_student"
    description = "DS-SRD: weak student <- EMA teacher of a strong student (teacher arch + head, mixup CE)"
    command = "distill"
    hosts = Hosts()
    Params = DoubleStudentParams

    @classmethod
    def check(cls, cfg) -> None:
        if not cfg.teacher.checkpoint:
            raise ConfigError("teacher.checkpoint: the double_student regime starts its teacher and strong student "
                              "from a trained teacher")
        if cfg.teacher.cache:
            raise ConfigError("teacher.cache: the double_student teacher changes every step; it cannot be cached")

    @classmethod
    def stream_options(cls, cfg, classes) -> dict[str, bool]:
        return {**super().stream_options(cfg, classes), "drop_last": True}  # the head's BatchNorm1d needs 2+ rows

    @classmethod
    def networks(cls, ctx: BuildContext, info, streams) -> dict[str, Net]:
        cfg = ctx.cfg
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
        student_shapes = probe_shapes(student, student_spec, example)
        teacher_shapes = probe_shapes(teacher_model, teacher_spec, example)
        if teacher_shapes.pooled is None:
            raise ConfigError(f"teacher: {arch} gives no pooled feature; the strong student's head needs its width")
        s = cls.params(cfg)
        head = PredictionHead(info.num_classes, int(teacher_shapes.pooled[-1])) if s.head else nn.Identity()
        nets = {"student": Net(student, spec=student_spec, always=Needs(logits=True), shapes=student_shapes),
                "strong": Net(strong_net, spec=teacher_spec, always=Needs(logits=True),
                              shapes=replace(teacher_shapes), extra={"head": head},
                              features=lambda needs: WithHead(FeatureModel(strong_net, needs, teacher_spec), head)),
                "teacher": Net(teacher_model, role="ema", spec=teacher_spec, shapes=teacher_shapes, extra=teacher_meta,
                               ema_of="strong", ema_decay=s.ema_decay, ema_buffers=s.ema_buffers)}
        if s.mean_student:  # a copy now, before any hooks; it becomes rank 0's student once the engine places it
            nets["mean_student"] = Net(copy.deepcopy(student), role="ema", spec=student_spec, shapes=student_shapes,
                                       ema_of="student", ema_decay=s.mean_decay, starts_as_source=True)
        return nets

    @classmethod
    def outputs(cls, built: Built) -> Outputs:
        cfg, info, streams = built.cfg, built.info, built.streams
        student, teacher = built.nets["student"].module, built.nets["teacher"]
        deployed = student.deploy_module() if hasattr(student, "deploy_module") else student  # a _trans CNN
        deployed_arch = student.plain_arch if deployed is not student else cfg.student.arch
        arch = teacher.extra["arch"]
        evaluators = [ClassifierEvaluator(lambda: deployed, stream) for stream in ("val", "test") if stream in streams]
        at_best = [evaluators.pop()] if "val" in streams else []
        report = "val" if "val" in streams else "test"  # how the moving teacher fares: test_teacher_top1
        evaluators.append(ClassifierEvaluator(lambda: teacher.module, report, name="teacher"))

        def meta(arch_name: str):
            return lambda: {"arch": arch_name, "num_classes": info.num_classes, "in_channels": info.in_channels}

        def describe() -> dict[str, Any]:
            strong = built.nets["strong"]
            return {"student": cfg.student.arch, "student_params": count_params(student), "teacher": arch,
                    "strong_params": count_params(strong.module), "head_params": count_params(strong.extra["head"]),
                    "teacher_params": count_params(teacher.module),
                    "adapter_params": count_params(built.bundle.methods), "ema_decay": cls.params(cfg).ema_decay,
                    "methods": built.method_params()}

        return Outputs(evaluators, {"student": Artifact(lambda: deployed, meta(deployed_arch)),
                                    "teacher": Artifact(lambda: teacher.module, meta(arch))},
                       "val_top1" if "val" in streams else "test_top1", at_best, describe)
