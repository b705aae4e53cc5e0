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
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch
from torch import Tensor, nn

from kdzoo.data.recipe_streams import probe_stream
from kdzoo.distillers.byol import mlp_head
from kdzoo.errors import ConfigError
from kdzoo.models import FeatureModel, Needs
from kdzoo.models.features import Features
from kdzoo.models.probe import probe_shapes
from kdzoo.program.assemble import Built, Hosts, Net, Outputs, Regime, count_params
from kdzoo.program.evaluators import MetricEvaluator, knn_monitor
from kdzoo.program.networks import trained_network
from kdzoo.program.program import Artifact, BuildContext
from kdzoo.regimes.base import register_regime


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


@dataclass
class SelfSupervisedParams:
    """The target network's EMA and the projection width; `weak`: self-supervised DS-SRD's student (this arch),
    distilled jointly, e.g. by `weak.crd` with instance negatives."""

    ema_decay: float = field(default=0.999, metadata={"ge": 0, "le": 1})
    dim: int = field(default=128, metadata={"ge": 1})  # projector / predictor output
    weak: Optional[str] = None


@register_regime
class SelfSupervised(Regime):
    name = "self_supervised"
    description = "BYOL (+ i-Mix) without labels: online encoder + projector, EMA target; kNN monitor"
    command = "pretrain"
    hosts = Hosts(labels=False, batch_transform=False)
    Params = SelfSupervisedParams

    @classmethod
    def stream_options(cls, cfg, classes) -> dict[str, bool]:
        return {**super().stream_options(cfg, classes), "drop_last": True}  # the projector's BatchNorm1d

    @classmethod
    def streams(cls, ctx: BuildContext, options):
        streams, info = super().streams(ctx, options)
        cfg = ctx.cfg
        streams["probe"] = probe_stream(cfg.dataset, streams["train"], seed=cfg.seed, device=ctx.device,
                                        channels_last=cfg.engine.channels_last)  # the kNN monitor's images
        return streams, info

    @classmethod
    def networks(cls, ctx: BuildContext, info, streams) -> dict[str, Net]:
        cfg = ctx.cfg
        encoder, spec = trained_network(cfg.student, info, log=ctx.log)
        sample = streams["test"].sample_input()
        shapes = probe_shapes(encoder, spec, torch.stack([sample, sample]))
        if shapes.pooled is None:
            raise ConfigError(f"student.arch: {cfg.student.arch} gives no pooled feature to project")
        width, s = int(shapes.pooled[-1]), cls.params(cfg)
        target_encoder = copy.deepcopy(encoder)  # before any hooks: the copies share nothing
        online = Projected(encoder, spec, mlp_head(width, width, s.dim))
        target = Projected(target_encoder, spec, copy.deepcopy(online.projector))
        projected = Features(logits=torch.Size([2, s.dim]), pooled=shapes.pooled)
        nets = {"student": Net(online, shapes=projected, setup_module=encoder,
                               features=lambda needs: online),
                "teacher": Net(target, role="ema", shapes=projected, setup_module=target_encoder,
                               features=lambda needs: NoGrad(target),
                               ema_of="student", ema_decay=s.ema_decay, ema_buffers="keep", train_mode=True,
                               starts_as_source=True)}
        if s.weak:  # self-supervised DS-SRD's distilled student
            weak, weak_spec = trained_network(replace(cfg.student, arch=s.weak, checkpoint=None, freeze=[]), info,
                                              key="self_supervised.weak", log=ctx.log)
            nets["weak"] = Net(weak, spec=weak_spec, always=Needs(pooled=True))
        return nets

    @classmethod
    def outputs(cls, built: Built) -> Outputs:
        cfg, info, s = built.cfg, built.info, cls.params(built.cfg)
        online, target = built.nets["student"].module, built.nets["teacher"].module

        def meta() -> dict[str, Any]:
            return {"arch": cfg.student.arch, "num_classes": info.num_classes, "in_channels": info.in_channels,
                    "self_supervised": True}

        def describe() -> dict[str, Any]:
            return {"encoder": cfg.student.arch, "encoder_params": count_params(online.features.model),
                    "projector_params": count_params(online.projector),
                    "adapter_params": count_params(built.bundle.methods), "ema_decay": s.ema_decay,
                    "methods": built.method_params()}

        artifacts = {"student": Artifact(lambda: online.features.model, meta),
                     "target": Artifact(lambda: target.features.model, meta)}
        if "weak" in built.nets:  # the distilled student of self-supervised DS-SRD
            weak = built.nets["weak"].module
            artifacts["weak"] = Artifact(lambda: weak, lambda: {**meta(), "arch": s.weak})
        return Outputs([MetricEvaluator(knn_monitor(target))], artifacts, "test_knn_top1", describe=describe)
