"""One assembler builds every program. A regime declares what differs (its networks with their roles, the terms
its recipe gives, what it can host, its evaluators and artifacts); `assemble(regime, ctx)` runs the one fixed
sequence:

 1. the recipe's checks, then its terms (method classes resolved once);
 2. the streams, built once with what the methods need (indices, full batches), and the batch transform;
 3. the regime's networks, probed for their feature shapes on a real sample;
 4. the methods, bound to the networks, each with its SetupContext;
 5. capability checks: what a method needs and the regime cannot host is refused in one line (exit 2), before
    anything is written;
 6. grouped batches, view checks, the probe stream of per-epoch passes;
 7. each network's feature source (what the methods read of it), placed on the device: the trained ones in the
    Bundle, frozen and EMA ones beside it, a teacher read from its cache or replay where the recipe asks;
 8. the phases (init stages, then the main one) with the regime's evaluators, and the Program.

The engine then places the program (DDP around the Bundle) and runs it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from kdzoo.config.validate import from_dict, to_dict
from kdzoo.core.dist import barrier
from kdzoo.data.info import DatasetInfo
from kdzoo.data.recipe_streams import recipe_streams
from kdzoo.data.stream import DataStream
from kdzoo.distillers import Method, SetupContext
from kdzoo.distillers.base import NoParams
from kdzoo.errors import ConfigError
from kdzoo.models import FeatureModel, FeatureSpec, Needs
from kdzoo.models.features import Features
from kdzoo.models.frozen import FrozenTeacher
from kdzoo.models.probe import probe_shapes
from kdzoo.program.bundle import Bundle
from kdzoo.program.controllers import controller_for
from kdzoo.program.epoch_pass import attach_probe
from kdzoo.program.methods import build_methods, check_views, method_instances
from kdzoo.program.phases import init_phases, main_phase, needs_by_network
from kdzoo.program.program import Artifact, BuildContext, ModelSlot, Program
from kdzoo.program.teacher_sources import teacher_source
from kdzoo.program.train_stream import (
    attach_batch_transform,
    attach_groups,
    chosen_batch_transform,
    stream_needs,
)


@dataclass(frozen=True)
class Hosts:
    """What a regime can host. A method that needs what its regime cannot host is refused at build time."""

    groups: bool = False  # grouped batches (CKD's comparisons, mixed inputs: data/groups.py)
    init_stages: bool = False  # an init stage before the main phase (AB, FT, FSP)
    labels: bool = True  # terms that read labels (a self-supervised regime has none)
    batch_transform: bool = True  # a batch transform (HSAKD's rotate4)
    teacher_cache: bool = False  # a frozen teacher read from `teacher.cache` (cached outputs, replay)


@dataclass
class Net:
    """A network as a regime declares it. `module` is the bare network (what is saved, deployed and averaged);
    role: train (optimised), frozen (never updated) or ema (follows `ema_of` after every optimizer step).
    `always`: features it gives whatever the methods read; `shapes`: what methods see when they build adapters
    (default: probed on a real sample); `features(needs)`: the module that gives them (default: a FeatureModel
    for a trained network, a FrozenTeacher otherwise)."""

    module: nn.Module
    role: str = "train"
    spec: Optional[FeatureSpec] = None
    always: Needs = field(default_factory=Needs)
    shapes: Optional[Features] = None
    features: Optional[Callable[[Needs], nn.Module]] = None
    setup_module: Optional[nn.Module] = None  # what methods see of it when they build adapters (default: module)
    logits_trained: bool = True  # False: a self-supervised network whose classifier never trained
    extra: dict[str, Any] = field(default_factory=dict)  # facts its regime's outputs read (checkpoint metadata, ...)
    ema_of: Optional[str] = None
    ema_decay: float = 0.999
    ema_buffers: str = "copy"
    train_mode: bool = False
    starts_as_source: bool = False

    def feature_source(self, needs: Needs) -> nn.Module:
        if self.features is not None:
            return self.features(needs | self.always)
        if self.role == "train":
            return FeatureModel(self.module, needs | self.always, self.spec)
        return FrozenTeacher(self.module, needs | self.always, self.spec)


@dataclass
class Outputs:
    """What a run measures and deploys: evaluators (after eval_every epochs), at_best (once, on the best
    weights), the metric that selects the best checkpoint, the artifacts, and what `describe` adds."""

    evaluators: list
    artifacts: dict[str, Artifact]
    select: str = "test_top1"
    at_best: list = field(default_factory=list)
    describe: Callable[[], dict[str, Any]] = dict
    trains: Optional[list] = None  # the parameters the main phase optimises (default: all of the bundle's)


@dataclass
class Built:
    """What the regime's `outputs` may read: everything the assembler made."""

    ctx: BuildContext
    info: DatasetInfo
    streams: dict[str, DataStream]
    nets: dict[str, Net]
    methods: dict[str, Method]
    bundle: Bundle
    sources: dict[str, Any]  # what a step reads of each network, by name
    label_free: bool  # no term reads labels: a kNN monitor watches the run

    @property
    def cfg(self):
        return self.ctx.cfg

    def method_params(self) -> dict[str, Any]:
        return {name: to_dict(m.params) for name, m in self.methods.items()}


class Regime:
    """A declaration of how networks train together; `build(ctx)` is the assembler's."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    command: ClassVar[str] = "train"  # the CLI verb that runs it (train, distill or pretrain)
    verb_follows_teacher: ClassVar[bool] = False  # True: `train` runs it without a teacher term, `distill` with one
    hosts: ClassVar[Hosts] = Hosts()
    Params: ClassVar[type] = NoParams  # its own parameters: the recipe's section named after it

    @classmethod
    def params(cls, cfg) -> Any:
        """The regime's parameters from the recipe (`<regime name>:` section), validated; one-line errors."""
        return from_dict(cls.Params, cfg.regime_params, cls.name)

    @classmethod
    def build(cls, ctx: BuildContext) -> Program:
        return assemble(cls, ctx)

    @classmethod
    def check(cls, cfg) -> None:
        """Recipe-level refusals, before anything is built."""

    @classmethod
    def terms(cls, cfg) -> tuple[dict[str, float], dict]:
        """The loss terms and method sections (a regime with several networks may expand them)."""
        return dict(cfg.loss), dict(cfg.methods)

    @classmethod
    def stream_options(cls, cfg, classes: list[type]) -> dict[str, bool]:
        return stream_needs(cfg, classes)

    @classmethod
    def streams(cls, ctx: BuildContext, options: dict[str, bool]) -> tuple[dict[str, DataStream], DatasetInfo]:
        cfg = ctx.cfg
        return recipe_streams(cfg.dataset, seed=cfg.seed, device=ctx.device, channels_last=cfg.engine.channels_last,
                              **options)

    @classmethod
    def networks(cls, ctx: BuildContext, info: DatasetInfo, streams: dict[str, DataStream]) -> dict[str, Net]:
        raise NotImplementedError

    @classmethod
    def check_methods(cls, cfg, methods: dict[str, Method], nets: dict[str, Net]) -> None:
        """Refusals that need the bound methods."""

    @classmethod
    def outputs(cls, built: Built) -> Outputs:
        raise NotImplementedError


def check_hosted(methods: dict[str, Method], regime: type[Regime]) -> None:
    """Refuse at build time a method that needs what the regime does not host."""
    hosts, name = regime.hosts, regime.name
    for instance, m in methods.items():
        if not hosts.groups and m.group_layout() is not None:
            raise ConfigError(f"loss: {instance} trains on grouped batches (groups of images per row), which the "
                              f"{name} regime does not build; use a regime that does (the default one: kdzoo distill)")
        if not hosts.init_stages and m.init_stage() is not None:
            raise ConfigError(f"loss: {instance} needs its init stage before the main phase, which the {name} "
                              "regime does not run; use a regime that does (the default one: kdzoo distill)")
        if not hosts.labels and m.reads_labels():
            raise ConfigError(f"loss.{instance}: method {instance} trains with labels; the {name} regime uses none "
                              "(byol; crd with negatives: instance)")


def assemble(regime: type[Regime], ctx: BuildContext, given: Optional[tuple] = None) -> Program:
    """The regime's program; `given`: (streams, info) to build on instead of the recipe's (synthetic data)."""
    cfg, device = ctx.cfg, ctx.device
    regime.params(cfg)  # unknown or out-of-range parameters fail first
    regime.check(cfg)
    loss, sections = regime.terms(cfg)
    classes = list(dict.fromkeys(c for _, c in method_instances(loss).values()))
    if not regime.hosts.batch_transform and chosen_batch_transform(cfg, classes):
        raise ConfigError(f"dataset.batch_transform: the {regime.name} regime trains on its batches as they come")
    streams, info = given if given is not None else regime.streams(ctx, regime.stream_options(cfg, classes))
    attach_batch_transform(streams["train"], cfg, classes)
    nets = regime.networks(ctx, info, streams)
    sample = streams["test"].sample_input()
    example = torch.stack([sample, sample])
    shapes = {name: net.shapes if net.shapes is not None else probe_shapes(net.module, net.spec, example)
              for name, net in nets.items()}
    images = streams["train"].dataset  # before any grouping: what a teacher cache covers

    def setup(binding) -> SetupContext:
        student, teacher = nets[binding.student], nets.get(binding.teacher)
        seen = lambda net: net.setup_module if net.setup_module is not None else net.module  # noqa: E731
        return SetupContext(student=seen(student), teacher=seen(teacher) if teacher else None,
                            student_shapes=shapes[binding.student], teacher_shapes=shapes.get(binding.teacher),
                            train_targets=images.targets, batch_size=cfg.dataset.batch_size,
                            teacher_checkpoint=cfg.teacher.checkpoint, info=info,
                            teacher_logits_trained=teacher.logits_trained if teacher else True)

    methods = build_methods(loss, sections, setup, tuple(nets))
    check_hosted(methods, regime)
    for instance, m in methods.items():
        if nets[m.binding.student].role != "train":
            raise ConfigError(f"methods.{instance}.student: {m.binding.student} is not trained by terms (its role is "
                              f"{nets[m.binding.student].role})")
    regime.check_methods(cfg, methods, nets)
    attach_groups(streams["train"], methods, cfg.seed, ctx.out, ctx.log, ctx.dist.is_main, lambda: barrier(ctx.dist))
    check_views(methods, streams["train"].views)
    label_free = not any(m.reads_labels() for m in methods.values())
    attach_probe(streams, methods.values(), cfg, device, always=label_free)

    needs = needs_by_network(methods.values(), {name: Needs() for name in nets})
    memory_format = torch.channels_last if cfg.engine.channels_last else torch.contiguous_format
    trained = {name: net.feature_source(needs[name]) for name, net in nets.items() if net.role == "train"}
    bundle = Bundle(trained, methods).to(device, memory_format=memory_format)
    sources: dict[str, Any] = {name: getattr(bundle, name) for name in trained}
    frozen: dict[str, Any] = {}
    models: dict[str, ModelSlot] = {}
    epoch_hook = None
    for name, net in nets.items():
        role = net.role
        if role != "train":
            source = net.feature_source(needs[name]).to(device, memory_format=memory_format)
            if regime.hosts.teacher_cache and name == "teacher" and cfg.teacher.cache:
                source, epoch_hook = teacher_source(ctx, streams, methods, source, images, needs[name], info)
                role = "cached"
            frozen[name] = sources[name] = source
        models[name] = ModelSlot(net.module, role=role, features=sources[name], ema_of=net.ema_of,
                                 ema_decay=net.ema_decay, ema_buffers=net.ema_buffers, train_mode=net.train_mode,
                                 starts_as_source=net.starts_as_source)
    built = Built(ctx, info, streams, nets, methods, bundle, sources, label_free)
    out = regime.outputs(built)
    phases = init_phases(methods, bundle, frozen, cfg.engine.teacher_first) if regime.hosts.init_stages else []
    phases.append(main_phase(methods, loss, bundle, frozen, cfg.engine.teacher_first, cfg.epochs,
                             controller=controller_for(cfg.schedule, cfg.epochs), evaluators=out.evaluators,
                             at_best=out.at_best, select=out.select))
    if out.trains is not None:
        phases[-1].params = out.trains
    if epoch_hook is not None:  # the replayed epoch's draws and soft labels before the methods' own hooks
        phases[-1].on_epoch_start = _before(epoch_hook, phases[-1].on_epoch_start)
    return Program(models=models, data=streams, phases=phases, trainable=bundle, info=info,
                   artifacts=out.artifacts, describe=out.describe)


def _before(first, inner):
    def on_epoch_start(epoch: int, runtime) -> dict[str, float]:
        return {**first(epoch), **((inner(epoch, runtime) if inner is not None else None) or {})}

    return on_epoch_start


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
