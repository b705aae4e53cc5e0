"""torchvision (`tv:<name>`) and timm (`timm:<name>`) models, and where their features live.

`create_external` builds an untrained model with the requested classes and input channels. `spec_for_external`
names stage, pre-activation and head modules for the common torchvision families, and reads timm's own
`feature_info`. Conventions for stages: stem first where it has a resolution of its own, then the last module at
each resolution, as timm's `feature_info` does; for MobileNets/EfficientNet the final 1x1 "head" conv is left
out, like RepDistiller's MobileNetV2 features.
"""
from __future__ import annotations

import difflib
from typing import Optional

from torch import nn

from kdzoo.errors import KdzooError
from kdzoo.models.features import FeatureSpec, register_spec_provider
from kdzoo.models.registry import register_resolver


def create_external(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build `tv:<torchvision name>` or `timm:<timm name>` without pretrained weights."""
    prefix, _, arch = name.partition(":")
    if prefix == "tv":
        return _create_torchvision(arch, num_classes, in_channels)
    if prefix == "timm":
        return _create_timm(arch, num_classes, in_channels)
    raise KdzooError(f"unknown model {name!r}; external models are named tv:<name> or timm:<name>")


def _create_torchvision(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f"; did you mean {', '.join('tv:' + c for c in close)}?" if close else ""
        raise KdzooError(f"unknown model 'tv:{arch}'{hint}")
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _create_timm(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise KdzooError(f"model 'timm:{arch}' needs timm: pip install timm") from None
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    except RuntimeError as err:  # timm's "Unknown model (...)"
        raise KdzooError(f"unknown model 'timm:{arch}': {err}") from None


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first Conv2d for one with the same settings but `in_channels` inputs (freshly initialised)."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    # groups stays 1: torchvision's first convs are never grouped, and a grouped one could not take 1 channel.
    new = nn.Conv2d(in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode)
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name), leaf, new)


# ---------------------------------------------------------------------------------------------- feature specs

def spec_for_external(model: nn.Module) -> Optional[FeatureSpec]:
    """The FeatureSpec of a known torchvision or timm model, or None.

    Pre-activation hooks read a ReLU's input, so the ReLUs named in `preact` are switched to out-of-place
    (values are unchanged; an in-place ReLU would overwrite the input the hook kept).
    """
    spec = _torchvision_spec(model)
    if spec is None:
        spec = _timm_spec(model)
    if spec is not None:
        for name in spec.preact:
            if name is not None:
                module = model.get_submodule(name)
                if isinstance(module, nn.ReLU):
                    module.inplace = False
    return spec


def _downsamples(module: nn.Module) -> bool:
    """Whether a module reduces resolution (a strided conv or pool inside it)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            stride = m.stride if isinstance(m.stride, tuple) else (m.stride,)
            if max(stride) > 1:
                return True
    return False


def _level_ends(seq: nn.Sequential, prefix: str, skip_last: bool) -> tuple[str, ...]:
    """Names of the last child of `seq` at each resolution (a new level starts at each downsampling child)."""
    children = list(seq.named_children())
    if skip_last:
        children = children[:-1]
    ends: list[str] = []
    for i, (name, child) in enumerate(children):
        next_downsamples = i + 1 == len(children) or _downsamples(children[i + 1][1])
        if next_downsamples:
            ends.append(f"{prefix}.{name}")
    return tuple(ends)


def _last_child(seq: nn.Module) -> str:
    return list(seq.named_children())[-1][0]


def _torchvision_spec(model: nn.Module) -> Optional[FeatureSpec]:
    try:
        from torchvision import models as tvm
    except ImportError:
        return None

    if isinstance(model, tvm.ResNet):
        layers = ("layer1", "layer2", "layer3", "layer4")
        # A torchvision block calls its one ReLU several times; the pre-hook keeps the last call's input, which
        # is the residual sum before the block's final activation.
        return FeatureSpec(stages=("relu",) + layers, head="fc",
                           preact=(None,) + tuple(f"{n}.{_last_child(getattr(model, n))}.relu" for n in layers))
    if isinstance(model, (tvm.MobileNetV2, tvm.MobileNetV3, tvm.EfficientNet)):
        return FeatureSpec(stages=_level_ends(model.features, "features", skip_last=True),
                           head=f"classifier.{len(model.classifier) - 1}")
    if isinstance(model, tvm.ConvNeXt):
        return FeatureSpec(stages=_level_ends(model.features, "features", skip_last=False),
                           head=f"classifier.{len(model.classifier) - 1}")
    if isinstance(model, tvm.VGG):
        # Stage ends are the ReLUs right before each max pool; their input is the pre-activation.
        relus = tuple(f"features.{i - 1}" for i, m in enumerate(model.features)
                      if isinstance(m, nn.MaxPool2d) and isinstance(model.features[i - 1], nn.ReLU))
        return FeatureSpec(stages=relus, head=f"classifier.{len(model.classifier) - 1}", preact=relus)
    if isinstance(model, tvm.ShuffleNetV2):
        return FeatureSpec(stages=("conv1", "stage2", "stage3", "stage4"), head="fc")
    if isinstance(model, tvm.RegNet):
        stages = tuple(f"trunk_output.{n}" for n, _ in model.trunk_output.named_children())
        return FeatureSpec(stages=("stem",) + stages, head="fc",
                           preact=(None,) + tuple(f"{s}.{_last_child(model.get_submodule(s))}.activation"
                                                  for s in stages))
    if isinstance(model, tvm.DenseNet):
        # DenseNet.forward applies an in-place ReLU to norm5's output, so that stage map ends up activated.
        return FeatureSpec(stages=("features.relu0", "features.denseblock1", "features.denseblock2",
                                   "features.denseblock3", "features.norm5"), head="classifier")
    return None


def _timm_spec(model: nn.Module) -> Optional[FeatureSpec]:
    info = getattr(model, "feature_info", None)
    if not type(model).__module__.startswith("timm.") or not info or not hasattr(model, "get_classifier"):
        return None
    stages = tuple(entry["module"] if isinstance(entry, dict) else entry.module for entry in info)
    classifier = model.get_classifier()
    head = next((name for name, m in model.named_modules() if m is classifier and name), None)
    if head is None:
        return None
    return FeatureSpec(stages=stages, head=head)


def _check_external(name: str) -> None:
    if name.startswith("timm:"):
        try:
            import timm  # noqa: F401
        except ImportError:
            raise KdzooError(f"model {name!r} needs timm: pip install timm") from None


register_resolver(lambda name: name.startswith(("tv:", "timm:")), create_external, _check_external)
register_spec_provider(spec_for_external)
