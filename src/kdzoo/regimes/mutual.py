"""Online mutual distillation: N peers (any archs, `_aux` or plain) trained together from scratch, each on its
own terms plus distillation from every other peer, targets detached (Zhang et al. 2018, deep mutual learning;
HSAKD's online variant: `_aux` peers with ce + aux_ce own terms and hsakd from the others).

The recipe names the terms once; each is expanded per peer:
    peers: [{arch: resnet8_aux}, {arch: resnet8_aux}]
    loss: {ce: 1, aux_ce: 1, hsakd: 1, hsakd_logits: 1}
    -> peer0.ce, peer0.aux_ce, peer0.from1.hsakd, peer0.from1.hsakd_logits, peer1.ce, ..., peer1.from0.hsakd ...
A term of a method that needs a teacher becomes one term per other peer (the student peer i, the teacher peer j,
detached); any other term one per peer. Metrics per peer (`test_peer<i>_top1`); `test_top1` is the best peer's,
and the deployed checkpoint (`last/best.safetensors`) is the best peer at that evaluation; every peer's weights
are saved as `peer<i>.last.safetensors` and, at the epoch of the best `test_top1` (the best peer's best),
`peer<i>.best.safetensors`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from kdzoo.config.schema import ModelConfig
from kdzoo.config.validate import to_dict
from kdzoo.distillers.registry import method_for_term, split_term
from kdzoo.errors import ConfigError
from kdzoo.models import Needs
from kdzoo.models.aux import AuxNet, RotatedHeads
from kdzoo.program.assemble import Built, Net, Outputs, Regime, count_params
from kdzoo.program.evaluators import ClassifierEvaluator, HeadsEvaluator
from kdzoo.program.networks import trained_network
from kdzoo.program.program import Artifact, BuildContext
from kdzoo.regimes.base import register_regime


def peer_terms(loss: dict[str, float], methods_cfg: dict, peers: int) -> tuple[dict[str, float], dict]:
    """The recipe's terms and method sections expanded per peer (see the module docstring)."""
    expanded, sections = {}, {}
    for term, weight in loss.items():
        if split_term(term)[0]:
            raise ConfigError(f"loss.{term}: the mutual regime names each term once; it expands them per peer")
        cls = method_for_term(term)
        for i in range(peers):
            if cls.needs_teacher():
                for j in (j for j in range(peers) if j != i):
                    namespace = f"peer{i}.from{j}"
                    expanded[f"{namespace}.{term}"] = weight
                    sections[f"{namespace}.{cls.name}"] = {**methods_cfg.get(cls.name, {}), "student": f"peer{i}",
                                                           "teacher": f"peer{j}", "detach_teacher": True}
            else:
                expanded[f"peer{i}.{term}"] = weight
                sections.setdefault(f"peer{i}.{cls.name}", dict(methods_cfg.get(cls.name, {})))
    for name in methods_cfg:
        if not any(method_for_term(t).name == name for t in loss):
            raise ConfigError(f"methods.{name}: parameters given, but no loss term uses method {name}")
    return expanded, sections


class BestPeer:
    """Evaluates every peer; `test_top1`/`test_top5` are the best peer's, whose index the program keeps."""

    def __init__(self, peers: dict[str, torch.nn.Module], keeper: torch.Tensor, stream: str = "test"):
        self.each = [ClassifierEvaluator((lambda m: lambda: m)(m), stream, name) for name, m in peers.items()]
        self.names, self.keeper, self.stream = list(peers), keeper, stream

    def __call__(self, runtime) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for evaluator in self.each:
            metrics.update(evaluator(runtime))
        s = self.stream
        best = max(range(len(self.names)), key=lambda i: metrics[f"{s}_{self.names[i]}_top1"])
        self.keeper.fill_(best)
        top = {k[len(f"{s}_{self.names[best]}_"):]: v for k, v in metrics.items()
               if k.startswith(f"{s}_{self.names[best]}_")}
        return {**metrics, **{f"{s}_{k}": v for k, v in top.items()}, f"{s}_best_peer": float(best)}


@dataclass
class MutualParams:
    peers: list[ModelConfig] = field(default_factory=list)  # the networks trained together (`peers:` in recipes)


@register_regime
class Mutual(Regime):
    name = "mutual"
    description = "N peers trained together from scratch, each distilled from the others (DML, HSAKD online)"
    Params = MutualParams

    @classmethod
    def check(cls, cfg) -> None:
        peers = cls.params(cfg).peers
        if len(peers) < 2:
            raise ConfigError(f"peers: the mutual regime trains 2 or more peers, got {len(peers)}")
        for which, given in (("student", to_dict(cfg.student) != to_dict(type(cfg)().student)),
                             ("teacher", bool(cfg.teacher.checkpoint))):
            if given:
                raise ConfigError(f"{which}: the mutual regime trains its peers (peers: [...]) and no {which}; drop "
                                  f"{which}.*")

    @classmethod
    def terms(cls, cfg) -> tuple[dict[str, float], dict]:
        return peer_terms(cfg.loss, cfg.methods, len(cls.params(cfg).peers))

    @classmethod
    def networks(cls, ctx: BuildContext, info, streams) -> dict[str, Net]:
        nets = {}
        for i, peer in enumerate(cls.params(ctx.cfg).peers):
            model, spec = trained_network(peer, info, key=f"peers[{i}]", log=ctx.log)
            nets[f"peer{i}"] = Net(model, spec=spec, always=Needs(logits=True))
        return nets

    @classmethod
    def outputs(cls, built: Built) -> Outputs:
        info, declared = built.info, cls.params(built.cfg).peers
        peers = {name: net.module for name, net in built.nets.items()}
        names = list(peers)
        built.bundle.register_buffer("best_peer", torch.zeros((), dtype=torch.long, device=built.ctx.device))
        evaluators: list = [BestPeer(peers, built.bundle.best_peer)]
        for name, model in peers.items():  # each _aux peer's heads too, as HSAKD's online script reports
            if isinstance(model, AuxNet) and info.image_size is not None:
                view = RotatedHeads(model)
                named = (lambda n: lambda out: {f"{n}_{k}": v for k, v in out.items()})(name)
                evaluators.append(HeadsEvaluator((lambda v: lambda: v)(view), heads=named, rows_per_sample=4))

        def meta_of(i: int) -> dict[str, Any]:
            return {"arch": declared[i].arch, "num_classes": info.num_classes, "in_channels": info.in_channels,
                    "peer": i}

        best = lambda: int(built.bundle.best_peer)  # noqa: E731
        artifacts = {"best_peer": Artifact(lambda: peers[names[best()]], lambda: meta_of(best()))}
        artifacts.update({n: Artifact((lambda m: lambda: m)(m), (lambda i: lambda: meta_of(i))(i))
                          for i, (n, m) in enumerate(peers.items())})

        def describe() -> dict[str, Any]:
            return {"peers": [p.arch for p in declared], "peer_params": [count_params(m) for m in peers.values()],
                    "methods": built.method_params()}

        return Outputs(evaluators, artifacts, describe=describe)
