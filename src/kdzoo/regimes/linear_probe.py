"""Linear evaluation of a trained encoder (i-Mix's protocol; HSAKD's transfer probes): the network of
`student.checkpoint` (any run's student or teacher artifact; an `_aux` model's backbone, its rotation heads
dropped, as HSAKD's eval_rep.py probes it; a `_trans` model's CNN) is frozen whole, BatchNorm statistics
included, and a new linear classifier on its pooled feature (weights N(0, 0.01), bias 0) trains on the recipe's
dataset, resized to the encoder's input size.

With `dataset.augment: false` nothing about the encoder changes between epochs, so its features are computed
once, before training, and the classifier trains on them (seconds on a CPU); otherwise every step runs the frozen
encoder on freshly augmented images. Deployed: the encoder with the new classifier as its head, an ordinary
checkpoint of the encoder's arch (the plain arch of an `_aux` model) for the probe dataset's classes (`kdzoo eval`
reads it).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from kdzoo.checkpoints.format import load_weights
from kdzoo.checkpoints.store import resolve_checkpoint
from kdzoo.data.in_memory import InMemoryVectorDataset
from kdzoo.data.loaders import make_loader
from kdzoo.data.stream import DataStream
from kdzoo.errors import ConfigError, KdzooError
from kdzoo.models import FeatureModel, FeatureSpec, Needs, create_model, feature_spec
from kdzoo.models.features import Features, body_names
from kdzoo.models.freezing import freeze
from kdzoo.program.assemble import Built, Hosts, Net, Outputs, Regime, count_params
from kdzoo.program.evaluators import ClassifierEvaluator
from kdzoo.program.program import Artifact
from kdzoo.regimes.base import register_regime


def probed_encoder(checkpoint: str, num_classes: int, in_channels: int, log) -> tuple[nn.Module, str, dict]:
    """The checkpoint's network for `num_classes` classes: every tensor but the head's loaded, the head new. An
    `_aux` network is probed as its backbone, the plain arch, without the rotation heads (HSAKD's eval_rep.py)."""
    file = resolve_checkpoint(checkpoint, "best")
    state, meta = load_weights(file)
    arch = meta.get("arch")
    if arch is None:
        raise ConfigError(f"student.checkpoint: {file} names no architecture; it holds no encoder to probe")
    if meta.get("in_channels", 3) != in_channels:
        raise ConfigError(f"dataset: the encoder of {file} takes {meta.get('in_channels', 3)}-channel images, the "
                          f"probe dataset has {in_channels}")
    probed_arch, state = backbone_of(arch, state)
    try:
        model = create_model(probed_arch, num_classes=num_classes, in_channels=in_channels)
        head = feature_spec(model).head
    except KdzooError as err:
        raise ConfigError(f"student.checkpoint: {file}: no encoder with a pooled feature to probe ({err})") from None
    check_encoder(model.state_dict(), state, head, f"student.checkpoint: {file} does not hold a whole "
                                                   f"{probed_arch} encoder")
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(head + ".")}, strict=False)
    linear = model.get_submodule(head)
    if not isinstance(linear, nn.Linear):
        raise ConfigError(f"student.checkpoint: {probed_arch}'s classifier {head!r} is not a linear layer")
    nn.init.normal_(linear.weight, 0.0, 0.01)
    nn.init.zeros_(linear.bias)
    freeze(model, body_names(model, head))
    dropped = f" ({arch}'s backbone; its rotation heads dropped)" if probed_arch != arch else ""
    log(f"linear probe: {probed_arch} from {file}{dropped} frozen ({count_params(model) - count_params(linear)} "
        f"parameters), a new {linear.in_features} -> {num_classes} classifier")
    return model, head, {"arch": arch, "probed_arch": probed_arch, "file": str(file)}


def backbone_of(arch: str, state: dict) -> tuple[str, dict]:
    """The arch and tensors to probe: an `_aux` network's backbone (the plain arch, under `backbone.`), else the
    network itself."""
    if not arch.endswith("_aux"):
        return arch, state
    return arch[:-len("_aux")], {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}


def check_encoder(own: dict, state: dict, head: str, what: str) -> None:
    """Every tensor outside the head present with its shape; the error names the tensors that do not fit."""
    body = [k for k in own if not k.startswith(head + ".")]
    missing = [k for k in body if k not in state]
    reshaped = [k for k in body if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or reshaped:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(reshaped)} of another shape (e.g. {reshaped[0]}: {tuple(state[reshaped[0]].shape)} in the "
                  f"checkpoint, {tuple(own[reshaped[0]].shape)} in the encoder)"] if reshaped else []
        raise ConfigError(f"{what}: {'; '.join(parts)}")


@torch.no_grad()
def embed(model: nn.Module, stream: DataStream, device, log, name: str, progress: bool) -> InMemoryVectorDataset:
    """Pooled features of every sample of `stream` (in order) through the frozen encoder."""
    features = FeatureModel(model, Needs(pooled=True))
    model.eval()
    rows, labels = [], []
    loader = make_loader(stream.dataset, batch_size=256, train=False, seed=0)
    for raw in tqdm(loader, desc=f"features ({name})", disable=not progress, leave=False):
        batch = stream.batch(raw)
        rows.append(features(batch.inputs.to(device)).pooled.float().cpu())
        labels.append(batch.targets.cpu())
    features.remove_hooks()
    log(f"linear probe: {name} features computed once ({sum(len(r) for r in rows)} samples)")
    return InMemoryVectorDataset(torch.cat(rows), torch.cat(labels), getattr(stream.dataset, "info", None))


@register_regime
class LinearProbe(Regime):
    name = "linear_probe"
    description = "a frozen encoder (student.checkpoint) and a new linear classifier on its pooled feature"
    hosts = Hosts(batch_transform=False)

    @classmethod
    def check(cls, cfg) -> None:
        if not cfg.student.checkpoint:
            raise ConfigError("student.checkpoint: the linear_probe regime probes a trained encoder; name its run "
                              "folder or .safetensors file")
        if set(cfg.loss) != {"ce"}:
            raise ConfigError(f"loss: a linear probe trains with ce alone, got {', '.join(cfg.loss)}")

    @classmethod
    def networks(cls, ctx, info, streams) -> dict[str, Net]:
        cfg, device = ctx.cfg, ctx.device
        model, head, origin = probed_encoder(cfg.student.checkpoint, info.num_classes, info.in_channels, ctx.log)
        if cfg.student.arch and cfg.student.arch != origin["arch"]:
            raise ConfigError(f"student.arch: {cfg.student.arch}, but {origin['file']} holds a {origin['arch']}")
        model.to(device)
        linear = model.get_submodule(head)
        cached = not cfg.dataset.augment
        if cached:  # the frozen encoder sees the same images every epoch: features once
            for name in [n for n in ("train", "val", "test") if n in streams]:
                s = streams[name]
                streams[name] = DataStream(embed(model, s, device, ctx.log, name, cfg.engine.progress),
                                           s.batch_size, train=s.train, drop_last=s.drop_last, seed=s.seed,
                                           device=device)
            trained = FeatureModel(linear, Needs(logits=True), FeatureSpec(stages=(), head=""))
        else:
            trained = FeatureModel(model, Needs(logits=True))
        meta = {**origin, "linear": linear, "evaluated": linear if cached else model, "cached": cached}
        shapes = Features(logits=torch.Size([2, info.num_classes]))  # what ce reads; the encoder is not for methods
        return {"student": Net(model, shapes=shapes, features=lambda needs: trained, extra=meta)}

    @classmethod
    def outputs(cls, built: Built) -> Outputs:
        info, streams, net = built.info, built.streams, built.nets["student"]
        model, origin, linear = net.module, net.extra, net.extra["linear"]
        evaluators = [ClassifierEvaluator(lambda: origin["evaluated"], s) for s in ("val", "test") if s in streams]
        at_best = [evaluators.pop()] if "val" in streams else []

        def meta() -> dict[str, Any]:
            return {"arch": origin["probed_arch"], "num_classes": info.num_classes, "in_channels": info.in_channels,
                    "probe_of": origin["file"]}

        def describe() -> dict[str, Any]:
            return {"encoder": origin["probed_arch"], "encoder_checkpoint": origin["file"],
                    "features_cached": origin["cached"], "encoder_params": count_params(model) - count_params(linear),
                    "classifier_params": count_params(linear)}

        return Outputs(evaluators, {"student": Artifact(lambda: model, meta)},
                       "val_top1" if "val" in streams else "test_top1", at_best, describe,
                       trains=list(linear.parameters()))  # the classifier alone trains
