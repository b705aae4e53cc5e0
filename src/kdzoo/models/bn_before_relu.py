"""For each stage of a model, the BatchNorm whose output feeds the stage's pre-activation (OFD reads its weight and
bias as the mean and spread of the pre-ReLU values).

mdistiller names these BatchNorms by hand per architecture (`get_bn_before_relu`: a ResNet's `layerK[-1].bn2`, a
WRN's next `bn1`, a VGG block's last BN, a MobileNetV2 group's last `conv[-1]`). Here they are found from the
model's FeatureSpec alone, by one probe forward in eval mode with autograd recording:

- every BatchNorm's output node and each stage's pre-activation node (the input of `spec.preact[i]`, or the stage
  output where that is None; the last call wins, as in FeatureModel) are recorded by hooks;
- from the pre-activation node the graph is walked back through additions (and clones) only: the BatchNorms
  reached that way are those whose output is summed into the pre-activation unchanged;
- of those, the deepest (the longest chain of operations from the input) is the main branch's; a residual
  shortcut's BatchNorm (a 1x1 projection of the block input) and those reached through identity shortcuts from
  earlier blocks are shallower. Call order would not do: RepDistiller's blocks run the projection shortcut after
  `bn2`.

A stage whose pre-activation is not such a sum (a concatenation as in ShuffleNetV2, a ReLU output as a stem's, a
LayerNorm network) gets None, as does one whose BatchNorm width differs from the stage's channels.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from kdzoo.models.features import FeatureSpec, feature_spec

# Autograd nodes a BatchNorm's output may pass through and still be the pre-activation's value (plus a shortcut).
PASS_THROUGH = frozenset({"AddBackward0", "CloneBackward0", "AliasBackward0"})


def _example(model: nn.Module, input_shape: Optional[tuple[int, ...]]) -> Tensor:
    """A 2-sample probe batch on the model's device: `input_shape`, else 32x32 with the first conv's channels."""
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    if input_shape is None:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        input_shape = (conv.in_channels if conv is not None else 3, 32, 32)
    return torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)


def _depths(roots: list) -> dict:
    """Longest path (in autograd nodes) from each node below `roots` to a leaf; iterative, as graphs are deep."""
    depth: dict = {}
    stack = [(node, False) for node in roots]
    while stack:
        node, expanded = stack.pop()
        if node in depth:
            continue
        children = [c for c, _ in node.next_functions if c is not None]
        if expanded:
            depth[node] = 1 + max((depth[c] for c in children), default=0)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if c not in depth)
    return depth


def _feeding(node, bns: dict) -> list:
    """The BatchNorm nodes whose outputs reach `node` through PASS_THROUGH nodes only."""
    found, stack, seen = [], [node], set()
    while stack:
        n = stack.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        if n in bns:
            found.append(n)
        elif type(n).__name__ in PASS_THROUGH:
            stack.extend(c for c, _ in n.next_functions)
    return found


def bn_before_relu(model: nn.Module, spec: Optional[FeatureSpec] = None,
                   input_shape: Optional[tuple[int, ...]] = None) -> list[Optional[str]]:
    """Per stage of `spec` (default: the model's own), the name of the BatchNorm that feeds its pre-activation, or
    None. Runs one forward of a 2-sample batch of `input_shape` (C, H, W) in eval mode; the model's mode is
    restored and its parameters and statistics are left untouched."""
    spec = spec or feature_spec(model)
    bns: dict = {}  # output node -> BatchNorm name (the dict keeps the nodes alive, so identity holds)
    widths: dict[str, int] = {}
    points: dict[int, tuple] = {}  # stage -> (pre-activation node, channels)
    handles = []

    def bn_hook(name):
        def hook(module, _inputs, output):
            if output.grad_fn is not None:
                bns[output.grad_fn] = name
        return hook

    def point_hook(i, pre: bool):
        def hook(_module, *args):
            value = args[0][0] if pre else args[1]
            if isinstance(value, Tensor):
                points[i] = (value.grad_fn, value.shape[1] if value.dim() > 1 else None)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            widths[name] = module.num_features
            handles.append(module.register_forward_hook(bn_hook(name)))
    for i, (stage, pre) in enumerate(zip(spec.stages, spec.preact)):
        if pre is not None:
            handles.append(model.get_submodule(pre).register_forward_pre_hook(point_hook(i, True)))
        else:
            handles.append(model.get_submodule(stage).register_forward_hook(point_hook(i, False)))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            model(_example(model, input_shape).requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    result: list[Optional[str]] = []
    for i in range(len(spec.stages)):
        node, channels = points.get(i, (None, None))
        hits = _feeding(node, bns) if node is not None else []
        if not hits:
            result.append(None)
            continue
        depth = _depths(hits)
        name = bns[max(hits, key=lambda n: depth[n])]
        result.append(name if widths[name] == channels else None)
    return result
