"""Self-supervised training without labels (BYOL with i-Mix; DS-SRD's self-supervised teacher, kibok90/imix):

- `student`: the online network, the recipe's `student.arch` encoder + projector Linear(F, F) -> BN -> ReLU ->
  Linear(F, dim) on its pooled feature (F its width); the `byol` method owns the predictor.
- `teacher`: the target, an EMA (`self_supervised.ema_decay`, 0.999) of encoder + projector (not the predictor),
  updated after every optimizer step, that is before the next step's target forward; it runs in training mode
  (batch statistics; its BN running statistics are its own), without gradients.

Two views per image come from `dataset.views: {x: byol, x2: byol}`. Only methods that read no labels train here
(`byol`); the labels of the data are used by the kNN monitor alone (`test_knn_top1`: 20 nearest training images by
cosine of the target encoder's pooled features, plain pipeline) to watch training; since it reads test labels,
`kdzoo linear-eval` probes the run's last checkpoint, not the one it calls best. Deployed: the
online encoder (`student`) and the target encoder (`target.*`), ordinary zoo checkpoints whose classifier is
untrained: `kdzoo linear-eval` measures them.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from kdzoo.config.validate import to_dict
from kdzoo.data.recipe_streams import probe_stream, recipe_streams
from kdzoo.distillers import SetupContext
from kdzoo.distillers.byol import mlp_head
from kdzoo.errors import ConfigError
from kdzoo.models import FeatureModel, Needs
from kdzoo.models.features import Features
from kdzoo.models.probe import probe_shapes
from kdzoo.program import Artifact, ModelSlot, Program
from kdzoo.program.bundle import Bundle
from kdzoo.program.controllers import controller_for
from kdzoo.program.evaluators import MetricEvaluator, knn_monitor
from kdzoo.program.methods import build_methods, check_hosted, check_views, method_instances
from kdzoo.program.networks import trained_network
from kdzoo.program.phases import main_phase, needs_by_network
from kdzoo.program.train_stream import stream_needs
from kdzoo.regimes.base import BuildContext, Regime, count_params, register_regime


class Projected(nn.Module):
    """Features(logits=projector(pooled), pooled=pooled) of an encoder."""

    def __init__(self, encoder: nn.Module, spec, projector: nn.Module):
        super().__init__()
        self.features = FeatureModel(encoder, Needs(pooled=True), spec)
        self.projector = projector

    def forward(self, x: Tensor) -> Features:
        pooled = self.features(x).pooled
        return Features(logits=self.projector(pooled), pooled=pooled)


class NoGrad(nn.Module):
    """A network run without gradients (its parameters never require them), in whatever mode it is in."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        for p in net.parameters():
            p.requires_grad_(False)

    def forward(self, x: Tensor) -> Features:
        with torch.no_grad():
            return self.net(x)


@register_regime
class SelfSupervised(Regime):
    name = "self_supervised"
    description = "BYOL (+ i-Mix) without labels: online encoder + projector, EMA target; kNN monitor"

    @classmethod
    def build(cls, ctx: BuildContext) -> Program:
        cfg, device = ctx.cfg, ctx.device
        classes = [c for _, c in method_instances(cfg.loss).values()]
        streams, info = recipe_streams(cfg.dataset, seed=cfg.seed, device=device,
                                       channels_last=cfg.engine.channels_last,
                                       **{**stream_needs(cfg, classes), "drop_last": True})
        streams["probe"] = probe_stream(cfg.dataset, streams["train"], seed=cfg.seed, device=device,
                                        channels_last=cfg.engine.channels_last)
        encoder, spec = trained_network(cfg.student, info, log=ctx.log)
        sample = streams["test"].sample_input()
        shapes = probe_shapes(encoder, spec, torch.stack([sample, sample]))
        if shapes.pooled is None:
            raise ConfigError(f"student.arch: {cfg.student.arch} gives no pooled feature to project")
        width, s = int(shapes.pooled[-1]), cfg.self_supervised
        target_encoder = copy.deepcopy(encoder)  # before any hooks: the copies share nothing
        online = Projected(encoder, spec, mlp_head(width, width, s.dim))
        target = Projected(target_encoder, spec, copy.deepcopy(online.projector))
        target.projector.load_state_dict(online.projector.state_dict())
        projected = Features(logits=torch.Size([2, s.dim]), pooled=shapes.pooled)
        nets, net_shapes = {"student": encoder, "teacher": target_encoder}, {"student": projected, "teacher": projected}
        weak = weak_spec = None
        if s.weak:
            weak, weak_spec = trained_network(replace(cfg.student, arch=s.weak, checkpoint=None, freeze=[]), info,
                                              key="self_supervised.weak", log=ctx.log)
            nets["weak"], net_shapes["weak"] = weak, probe_shapes(weak, weak_spec, torch.stack([sample, sample]))

        def setup(binding) -> SetupContext:
            return SetupContext(student=nets[binding.student], teacher=nets.get(binding.teacher),
                                student_shapes=net_shapes[binding.student],
                                teacher_shapes=net_shapes.get(binding.teacher), num_classes=info.num_classes,
                                train_targets=streams["train"].dataset.targets, batch_size=cfg.dataset.batch_size,
                                epochs=cfg.epochs, device=device, info=info)

        methods = build_methods(cfg.loss, cfg.methods, setup, tuple(nets))
        check_hosted(methods, "self_supervised")
        labelled = [name for name, m in methods.items() if m.reads_labels()]
        if labelled:
            raise ConfigError(f"loss.{labelled[0]}: method {labelled[0]} trains with labels; the self_supervised "
                              "regime uses none (byol; crd with negatives: instance)")
        check_views(methods, streams["train"].views)
        memory_format = torch.channels_last if cfg.engine.channels_last else torch.contiguous_format
        trained = {"student": online}
        if weak is not None:
            needs = needs_by_network(methods.values(), {"weak": Needs()})
            trained["weak"] = FeatureModel(weak, needs["weak"] | Needs(pooled=True), weak_spec)
        bundle = Bundle(trained, methods).to(device, memory_format=memory_format)
        frozen: dict[str, Any] = {"teacher": NoGrad(target).to(device, memory_format=memory_format)}
        models = {"student": ModelSlot(online, features=bundle.student),
                  **({"weak": ModelSlot(weak, features=bundle.weak)} if weak is not None else {}),
                  "teacher": ModelSlot(target, role="ema", ema_of="student", ema_decay=s.ema_decay, ema_buffers="keep",
                                       train_mode=True, starts_as_source=True, features=frozen["teacher"])}
        phase = main_phase(methods, cfg.loss, bundle, frozen, cfg.engine.teacher_first, cfg.epochs,
                           controller=controller_for(cfg.schedule, cfg.epochs),
                           evaluators=[MetricEvaluator(knn_monitor(target))], select="test_knn_top1")

        def meta() -> dict[str, Any]:
            return {"arch": cfg.student.arch, "num_classes": info.num_classes, "in_channels": info.in_channels,
                    "self_supervised": True}

        def describe() -> dict[str, Any]:
            return {"encoder": cfg.student.arch, "encoder_params": count_params(encoder),
                    "projector_params": count_params(online.projector), "adapter_params": count_params(bundle.methods),
                    "ema_decay": s.ema_decay, "methods": {name: to_dict(m.params) for name, m in methods.items()}}

        artifacts = {"student": Artifact(lambda: encoder, meta), "target": Artifact(lambda: target_encoder, meta)}
        if weak is not None:  # the distilled student of self-supervised DS-SRD
            artifacts["weak"] = Artifact(lambda: weak, lambda: {**meta(), "arch": s.weak})
        return Program(models=models, data=streams, phases=[phase], trainable=bundle, info=info,
                       artifacts=artifacts, describe=describe)
