"""Take logits, pooled embedding and stage maps from any model by forward hooks.

A zoo model names its stages with a `feature_spec()` method; torchvision/timm models get theirs from
`kdzoo.models.external`; any other model can be given a spec explicitly. The model itself is never rewritten,
so `model(x)` keeps returning logits and published state_dicts load unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Optional

from torch import Tensor, nn

from kdzoo.errors import KdzooError


@dataclass(frozen=True)
class FeatureSpec:
    """Where a model's features live, by module name (as in `model.named_modules()`).

    stages: modules whose outputs are the stage maps, shallow to deep, stem first (RepDistiller's feat[0:-1]).
    preact: per stage, a module whose *input* is that stage's output before its last activation (ReLU), or
            None where the pre-activation equals the stage output. When the module runs several times during a
            forward (torchvision's shared ReLU), the last call wins.
    head:   the classifier; its input is the pooled embedding and its output the logits.
    """

    stages: tuple[str, ...]
    head: str
    preact: tuple[Optional[str], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        pre = tuple(self.preact) if self.preact else (None,) * len(self.stages)
        if len(pre) != len(self.stages):
            raise ValueError("FeatureSpec.preact must have one entry per stage")
        object.__setattr__(self, "preact", pre)


@dataclass(frozen=True)
class Needs:
    """Which features a method wants from one network."""

    logits: bool = False
    pooled: bool = False
    stages: bool = False
    preact: bool = False
    heads: bool = False  # the auxiliary heads' logits of an `_aux` model (see models/aux.py)

    def __or__(self, other: "Needs") -> "Needs":
        return Needs(**{f.name: getattr(self, f.name) or getattr(other, f.name) for f in fields(self)})

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


@dataclass
class Features:
    """What one forward pass produced; fields that were not asked for are None."""

    logits: Optional[Tensor] = None
    pooled: Optional[Tensor] = None
    stages: Optional[list[Tensor]] = None
    preact: Optional[list[Tensor]] = None
    heads: Optional[list[Tensor]] = None

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Features":
        """Apply `fn` to every tensor (e.g. clone, float, detach)."""

        def one(t):
            return None if t is None else fn(t)

        def many(ts):
            return None if ts is None else [fn(t) for t in ts]

        return replace(self, logits=one(self.logits), pooled=one(self.pooled), stages=many(self.stages),
                       preact=many(self.preact), heads=many(self.heads))


# Functions that know where the features of models from elsewhere live (torchvision, timm): model -> spec or None.
SPEC_PROVIDERS: list[Callable[[nn.Module], Optional[FeatureSpec]]] = []


def register_spec_provider(provider: Callable[[nn.Module], Optional[FeatureSpec]]) -> None:
    SPEC_PROVIDERS.append(provider)


def feature_spec(model: nn.Module) -> FeatureSpec:
    """The FeatureSpec of a zoo model (or of any model exposing `feature_spec()`), else a provider's."""
    if hasattr(model, "feature_spec"):
        return model.feature_spec()
    for provider in SPEC_PROVIDERS:
        spec = provider(model)
        if spec is not None:
            return spec
    raise KdzooError(f"no feature spec for {type(model).__name__}; give its stage and head module names "
                     "in the config (stages: [...], head: ...)")


def get_head(model: nn.Module) -> nn.Module:
    """The classifier module of a model (SRRL and SimKD reuse the teacher's)."""
    return model.get_submodule(feature_spec(model).head)


def body_names(model: nn.Module, head: str) -> list[str]:
    """Names of the modules of `model` that hold all of its parameters except those of module `head`."""
    names: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if full == head:
                continue
            if head.startswith(full + "."):
                walk(child, full + ".")
            else:
                names.append(full)

    walk(model, "")
    return names


def student_body(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` whose parameters are all of its parameters except its classifier head's
    (what AB and FSP train in their init stages; what a frozen-backbone probe freezes)."""
    return [model.get_submodule(name) for name in body_names(model, feature_spec(model).head)]


class FeatureModel(nn.Module):
    """Wraps a model; `forward(x)` returns a `Features` holding only what `want` asks for."""

    def __init__(self, model: nn.Module, want: Needs = Needs(logits=True), spec: Optional[FeatureSpec] = None):
        super().__init__()
        self.model = model
        self.want = want
        self.spec = spec or feature_spec(model)
        self._store: dict[str, Tensor] = {}
        self._handles = []
        if want.pooled:
            self._hook_input(self.spec.head, "pooled")
        if want.stages or want.preact:
            if not self.spec.stages:
                raise KdzooError(f"{type(model).__name__} has no named stages; a method here needs stage features")
            for i, name in enumerate(self.spec.stages):
                self._hook_output(name, f"stage{i}")
        if want.preact:
            for i, name in enumerate(self.spec.preact):
                if name is not None:
                    self._hook_input(name, f"preact{i}")
        if want.heads:
            if not hasattr(model, "head_logits"):
                raise KdzooError(f"{type(model).__name__} has no auxiliary heads; a method here needs an _aux "
                                 "model (e.g. resnet8_aux)")
            for i, name in enumerate(model.aux_inputs()):
                self._hook_output(name, f"aux{i}")

    def _module(self, name: str) -> nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise KdzooError(f"{type(self.model).__name__} has no module named {name!r}") from None

    def _hook_output(self, name: str, key: str) -> None:
        def hook(_module, _inputs, output):
            self._store[key] = output

        self._handles.append(self._module(name).register_forward_hook(hook))

    def _hook_input(self, name: str, key: str) -> None:
        def hook(_module, inputs):
            self._store[key] = inputs[0]

        module = self._module(name)
        if getattr(module, "inplace", False):  # an in-place ReLU would overwrite the kept pre-activation
            module.inplace = False
        self._handles.append(module.register_forward_pre_hook(hook))

    def forward(self, x: Tensor) -> Features:
        self._store.clear()
        logits = self.model(x)
        store, self._store = self._store, {}
        n = len(self.spec.stages)
        feats = Features()
        if self.want.logits:
            feats.logits = logits
        if self.want.pooled:
            feats.pooled = store["pooled"].flatten(1)
        if self.want.stages:
            feats.stages = [store[f"stage{i}"] for i in range(n)]
        if self.want.preact:
            feats.preact = [store.get(f"preact{i}", store[f"stage{i}"]) for i in range(n)]
        if self.want.heads:
            feats.heads = self.model.head_logits([store[f"aux{i}"] for i in range(len(self.model.aux_inputs()))])
        return feats

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
