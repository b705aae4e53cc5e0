"""The default regime: a frozen teacher teaches one student through any weighted set of method terms."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from kdzoo.config.validate import from_dict, to_dict
from kdzoo.distillers import METHODS, Batch, Method, SetupContext, StepInfo, method_for_term
from kdzoo.engine.checkpoint import load_state_dict_strict
from kdzoo.engine.distributed import wrap_ddp
from kdzoo.engine.teacher import FrozenTeacher, load_model, load_teacher
from kdzoo.errors import ConfigError
from kdzoo.models import FeatureModel, FeatureSpec, Needs, create_model
from kdzoo.models.features import Features, feature_spec
from kdzoo.regimes.base import Phase, Regime, RunContext, count_params, register_regime

ALL_FEATURES = Needs(logits=True, pooled=True, stages=True, preact=True)


class StudentBundle(nn.Module):
    """The trainable side of a step: student forward and method losses (one module, so DDP can wrap it)."""

    def __init__(self, student: FeatureModel, methods: dict[str, Method]):
        super().__init__()
        self.student = student
        self.methods = nn.ModuleDict(methods)

    def forward(self, batch: Batch, teacher_feats: Optional[Features], step: StepInfo,
                teacher: Optional[FrozenTeacher] = None, init_method: Optional[str] = None,
                student_forward: bool = True) -> dict:
        s = self.student(batch.inputs) if student_forward else Features()
        t = teacher_feats
        if t is None and teacher is not None:
            t = teacher(batch.inputs)
        terms: dict[str, torch.Tensor] = {}
        if init_method is not None:
            terms.update(self.methods[init_method].init_losses(batch, s, t, step))
        else:
            for method in self.methods.values():
                if method.main_stage:
                    terms.update(method.losses(batch, s, t, step))
        return terms


def resolve_methods(cfg) -> dict[str, type]:
    """The method classes the recipe's loss terms call for, in recipe order; checks `methods:` keys."""
    classes: dict[str, type] = {}
    for term, weight in cfg.loss.items():
        cls = method_for_term(term)
        if weight != 0:
            classes.setdefault(cls.name, cls)
    for name in cfg.methods:
        if name not in METHODS:
            METHODS.get(name)  # raises "unknown method"
        if not any(term in METHODS.get(name).term_names() for term in cfg.loss):
            raise ConfigError(f"methods.{name}: parameters given, but no loss term uses method {name}")
    if not classes:
        raise ConfigError("loss: every term has weight 0; nothing to train")
    return classes


def spec_override(model_cfg, model: nn.Module) -> Optional[FeatureSpec]:
    if model_cfg.stages is None and model_cfg.head is None:
        return None
    default = None
    try:
        default = feature_spec(model)
    except Exception:  # noqa: BLE001 - an override is exactly for models without a spec
        pass
    stages = model_cfg.stages if model_cfg.stages is not None else (default.stages if default else [])
    head = model_cfg.head or (default.head if default else None)
    if head is None:
        raise ConfigError("head: name the classifier module of this model")
    return FeatureSpec(stages=tuple(stages), head=head)


@torch.no_grad()
def probe_shapes(model: nn.Module, spec: Optional[FeatureSpec], example: torch.Tensor) -> Features:
    """Feature shapes from one forward of a 2-sample batch in eval mode (BN statistics untouched)."""
    probe = FeatureModel(model, ALL_FEATURES if _has_stages(model, spec) else Needs(logits=True, pooled=True),
                         spec)
    was_training = model.training
    model.eval()
    try:
        feats = probe(example)
    finally:
        probe.remove_hooks()
        model.train(was_training)
    return feats.map(lambda t: t.shape)


def _has_stages(model: nn.Module, spec: Optional[FeatureSpec]) -> bool:
    return bool((spec or feature_spec(model)).stages)


@register_regime
class Offline(Regime):
    name = "offline"
    description = "frozen teacher -> one student (the classic setting; also plain training without a teacher)"

    def __init__(self, ctx: RunContext):
        super().__init__(ctx)
        cfg, info, device = ctx.cfg, ctx.info, ctx.device
        self.weights = dict(cfg.loss)
        classes = resolve_methods(cfg)
        self.needs_index = any(c.needs_index for c in classes.values())
        self.drop_last = cfg.dataset.drop_last or any(c.fixed_batch for c in classes.values())

        if cfg.student.arch is None:
            raise ConfigError("student.arch: required")
        student = create_model(cfg.student.arch, num_classes=info.num_classes, in_channels=info.in_channels)
        if cfg.student.checkpoint:
            init, _, file = load_model(cfg.student.checkpoint)
            load_state_dict_strict(student, init.state_dict(), str(file))
        student_spec = spec_override(cfg.student, student)

        teacher_model, self.teacher_meta, teacher_spec = None, None, None
        if any(c.needs_teacher() for c in classes.values()):
            if not cfg.teacher.checkpoint:
                needing = [n for n, c in classes.items() if c.needs_teacher()]
                raise ConfigError(f"teacher.checkpoint: method {needing[0]} needs a teacher checkpoint")
            teacher_model, self.teacher_meta = load_teacher(cfg.teacher.checkpoint, cfg.teacher.arch,
                                                            info.num_classes, info.in_channels, info.name)
            teacher_spec = spec_override(cfg.teacher, teacher_model)

        example = torch.zeros(2, *info.input_shape)
        setup = SetupContext(
            student=student, teacher=teacher_model,
            student_shapes=probe_shapes(student, student_spec, example),
            teacher_shapes=probe_shapes(teacher_model, teacher_spec, example) if teacher_model else None,
            num_classes=info.num_classes, train_targets=ctx.train_targets, batch_size=cfg.dataset.batch_size,
            epochs=cfg.epochs, device=device)
        methods = {}
        for name, cls in classes.items():
            params = from_dict(cls.Params, cfg.methods.get(name, {}), f"methods.{name}")
            methods[name] = cls(params, setup)
        self.method_params = {name: to_dict(m.params) for name, m in methods.items()}

        student_needs = Needs(logits=True)
        teacher_needs = Needs()
        for cls in classes.values():
            student_needs |= cls.student_needs
            teacher_needs |= cls.teacher_needs
        memory_format = torch.channels_last if cfg.engine.channels_last else torch.contiguous_format
        self.teacher = None
        if teacher_model is not None:
            self.teacher = FrozenTeacher(teacher_model, teacher_needs, teacher_spec).to(device,
                                                                                       memory_format=memory_format)
        self.bundle = StudentBundle(FeatureModel(student, student_needs, student_spec), methods).to(
            device, memory_format=memory_format)
        self.trainer = wrap_ddp(self.bundle, ctx.dist, device)
        self.teacher_first = cfg.engine.teacher_first

    @property
    def student(self) -> nn.Module:
        return self.bundle.student.model

    @property
    def methods(self) -> dict[str, Method]:
        return dict(self.bundle.methods.items())

    # Phases -------------------------------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        phases = []
        for name, method in self.methods.items():
            stage = method.init_stage()
            if stage is not None:
                params = [p for m in stage.modules for p in m.parameters()]
                step = self._step_fn(init_method=name, student_forward=stage.needs_student)
                phases.append(Phase(name=f"init:{name}", epochs=stage.epochs, params=params, step=step,
                                    weights=stage.weights, evaluate=False, lr=stage.lr, schedule=False))
        main = [m for m in self.methods.values() if m.main_stage]
        produced = {term for m in main for term in m.term_names()}
        weights = {term: w for term, w in self.weights.items() if term in produced}
        if not any(weights.values()):
            raise ConfigError("loss: no term with a non-zero weight acts in the main stage (add ce)")
        needs_teacher = any(m.needs_teacher() for m in main)
        phases.append(Phase(name="main", epochs=self.ctx.cfg.epochs, params=list(self.bundle.parameters()),
                            step=self._step_fn(use_teacher=needs_teacher), weights=weights))
        return phases

    def _step_fn(self, init_method: Optional[str] = None, use_teacher: bool = True, student_forward: bool = True):
        teacher = self.teacher if use_teacher else None
        options = dict(init_method=init_method, student_forward=student_forward)

        def step(batch: Batch, info: StepInfo) -> dict[str, torch.Tensor]:
            if teacher is not None and self.teacher_first:
                return self.trainer(batch, teacher(batch.inputs), info, **options)
            return self.trainer(batch, None, info, teacher=teacher, **options)

        return step

    def on_epoch_start(self, phase: str, epoch: int) -> None:
        if phase == "main":
            for method in self.methods.values():
                method.on_epoch_start(epoch)

    def after_step(self, phase: str) -> None:
        for method in self.methods.values():
            method.after_step()

    # Train/eval and deployment ------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> None:
        self.bundle.train(mode)

    def _wrapper(self) -> tuple[Optional[nn.Module], Optional[Method]]:
        for method in self.methods.values():
            wrapper = method.inference_wrapper(self.student)
            if wrapper is not None:
                return wrapper, method
        return None, None

    def eval_model(self) -> nn.Module:
        wrapper, _ = self._wrapper()
        return wrapper if wrapper is not None else self.student

    def deploy_meta(self) -> dict[str, Any]:
        info = self.ctx.info
        meta = {"arch": self.ctx.cfg.student.arch, "num_classes": info.num_classes,
                "in_channels": info.in_channels}
        _, method = self._wrapper()
        if method is not None:
            meta["wrapper"] = {"method": method.name, **method.inference_meta()}
        return meta

    def state_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bundle.load_state_dict(state["bundle"])

    def describe(self) -> dict[str, Any]:
        out = {"student": self.ctx.cfg.student.arch, "student_params": count_params(self.student),
               "adapter_params": count_params(self.bundle.methods), "methods": self.method_params}
        if self.teacher is not None:
            out.update(teacher=self.teacher_meta.get("arch"), teacher_params=count_params(self.teacher))
        return out
