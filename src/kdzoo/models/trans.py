"""CNN-Transformer students (DS-SRD): `<arch>_trans` = the plain zoo model plus a transformer branch beside its
last stage. The branch takes the input of the last stage (the previous stage's output) through BoTNet bottleneck
blocks (1x1 conv -> multi-head self-attention over the map's tokens with an absolute 2D position embedding ->
[2x2 average pool where the stage downsamples] -> 1x1 conv, residual; Srinivas et al. 2021, as in DS-SRD's
models/trans.py), as many blocks as the CNN's last stage has, to the last stage's width, then global pooling and
its own classifier.

`forward(x)` is the CNN's (the CNN branch evaluates and deploys as the plain arch: `deploy_module()`);
`head_logits([map])` runs the transformer branch on the map `aux_inputs()` names, so `Needs(heads=True)` gives
its logits to methods (`trans_kd`). ResNet50_trans at 100 classes: see README's parameter table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.errors import KdzooError
from kdzoo.models.features import FeatureSpec, feature_spec
from kdzoo.models.registry import MODELS, register_model, register_resolver

HEADS = 4
PROBE_SIZE = 32  # the grid the position embedding is made for; other sizes interpolate it


class AbsolutePosition(nn.Module):
    """Per-row plus per-column embeddings (BoTNet's AbsPosEmb): logits q . (e_row + e_col)."""

    def __init__(self, height: int, width: int, dim_head: int):
        super().__init__()
        scale = dim_head ** -0.5
        self.height = nn.Parameter(torch.randn(height, dim_head) * scale)
        self.width = nn.Parameter(torch.randn(width, dim_head) * scale)

    @staticmethod
    def _fit(table: Tensor, size: int) -> Tensor:
        if table.shape[0] == size:
            return table
        return F.interpolate(table.t().unsqueeze(0), size=size, mode="linear", align_corners=False)[0].t()

    def forward(self, q: Tensor, h: int, w: int) -> Tensor:
        emb = self._fit(self.height, h)[:, None, :] + self._fit(self.width, w)[None, :, :]
        return q @ emb.reshape(h * w, -1).t().to(q.dtype)


class SelfAttention2d(nn.Module):
    def __init__(self, dim: int, height: int, width: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        self.qkv = nn.Conv2d(dim, 3 * heads * dim_head, 1, bias=False)
        self.position = AbsolutePosition(height, width, dim_head)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w).transpose(2, 3) for t in self.qkv(x).chunk(3, dim=1))
        q = q * self.scale
        logits = q @ k.transpose(2, 3) + self.position(q, h, w)
        out = logits.softmax(dim=-1) @ v  # (b, heads, hw, d)
        return out.transpose(2, 3).reshape(b, -1, h, w)


class BottleneckTransformerBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, height: int, width: int, downsample: bool):
        super().__init__()
        inner = max(dim_out // 4, HEADS)
        dim_head = max(16, dim_out // (4 * HEADS))
        if dim != dim_out or downsample:
            kernel, stride, padding = (3, 2, 1) if downsample else (1, 1, 0)
            self.shortcut = nn.Sequential(nn.Conv2d(dim, dim_out, kernel, stride, padding, bias=False),
                                          nn.BatchNorm2d(dim_out), nn.ReLU(inplace=True))
        else:
            self.shortcut = nn.Identity()
        self.net = nn.Sequential(
            nn.Conv2d(dim, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(inplace=True),
            SelfAttention2d(inner, height, width, HEADS, dim_head),
            nn.AvgPool2d(2) if downsample else nn.Identity(),
            nn.BatchNorm2d(HEADS * dim_head), nn.ReLU(inplace=True),
            nn.Conv2d(HEADS * dim_head, dim_out, 1, bias=False), nn.BatchNorm2d(dim_out))
        nn.init.zeros_(self.net[-1].weight)  # each block starts as its shortcut

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.net(x) + self.shortcut(x))


class TransNet(nn.Module):
    def __init__(self, backbone: nn.Module, plain_arch: str, num_classes: int, in_channels: int):
        super().__init__()
        self.backbone = backbone
        self.plain_arch = plain_arch
        spec = feature_spec(backbone)
        if len(spec.stages) < 2:
            raise KdzooError(f"model {plain_arch}_trans: {plain_arch} has no last stage to host a transformer branch")
        before, last = spec.stages[-2], spec.stages[-1]
        shapes = _probe(backbone, (before, last), in_channels)
        if any(len(s) != 4 for s in shapes.values()):
            raise KdzooError(f"model {plain_arch}_trans: the last stage of {plain_arch} does not work on 2D maps; "
                             "it cannot host a transformer branch")
        (_, dim, h, w), (_, dim_out, h_out, _) = shapes[before], shapes[last]
        downsample = h_out < h
        blocks = _block_count(backbone.get_submodule(last))
        layers = []
        for i in range(blocks):
            first = i == 0
            grid = (h, w) if first else (h // 2, w // 2) if downsample else (h, w)
            layers.append(BottleneckTransformerBlock(dim if first else dim_out, dim_out, *grid, first and downsample))
        self.branch = nn.Sequential(*layers)
        self.fc = nn.Linear(dim_out, num_classes)
        self._input = f"backbone.{before}"

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def deploy_module(self) -> nn.Module:
        """What deploys: the CNN branch, a plain `plain_arch` network."""
        return self.backbone

    def aux_inputs(self) -> tuple[str, ...]:
        return (self._input,)

    def head_logits(self, maps: list[Tensor]) -> list[Tensor]:
        return [self.fc(self.branch(maps[0]).mean(dim=(2, 3)))]

    def feature_spec(self) -> FeatureSpec:
        spec = feature_spec(self.backbone)
        prefix = lambda name: None if name is None else f"backbone.{name}"  # noqa: E731
        return FeatureSpec(stages=tuple(map(prefix, spec.stages)), head=prefix(spec.head),
                           preact=tuple(map(prefix, spec.preact)))


def _block_count(stage: nn.Module) -> int:
    """The residual blocks of a stage (through wrappers with one child, e.g. a WRN NetworkBlock's `.layer`)."""
    children = list(stage.children())
    while len(children) == 1 and isinstance(children[0], (nn.Sequential, nn.ModuleList)):
        children = list(children[0].children())
    return max(1, len(children))


def _probe(model: nn.Module, names: tuple[str, ...], in_channels: int) -> dict[str, torch.Size]:
    shapes: dict[str, torch.Size] = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: shapes.__setitem__(n, o.shape)) for n in names]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, PROBE_SIZE, PROBE_SIZE))
    except RuntimeError as err:
        raise KdzooError(f"model {getattr(model, 'kdzoo_arch', '?')}_trans: its last stage cannot host a transformer "
                         f"branch (a 32x32 probe image fails: {str(err).splitlines()[0]})") from None
    finally:
        model.train(was)
        for handle in handles:
            handle.remove()
    return shapes


def create_trans(name: str, num_classes: int, in_channels: int = 3) -> TransNet:
    plain = name[: -len("_trans")]
    if plain not in MODELS or plain.endswith(("_aux", "_trans")):
        raise KdzooError(f"model {name!r}: no plain zoo model {plain!r} to add a transformer branch to")
    backbone = MODELS.get(plain)(num_classes=num_classes, in_channels=in_channels)
    backbone.kdzoo_arch = plain
    return TransNet(backbone, plain, num_classes, in_channels)


TRANS_ARCHS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
               "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "ResNet18", "ResNet34", "ResNet50")

for _arch in TRANS_ARCHS:
    register_model(f"{_arch}_trans", f"{_arch} + a BoTNet transformer branch beside its last stage (DS-SRD)")(
        lambda num_classes, in_channels=3, _name=f"{_arch}_trans": create_trans(_name, num_classes, in_channels))


def _check_trans(name: str) -> None:
    create_trans(name, num_classes=10)  # raises why the arch cannot host a transformer branch


# `<arch>_trans` of an arch that has no registered _trans model: its builder says why it cannot be one
register_resolver(lambda name: name.endswith("_trans") and name not in MODELS, create_trans, _check_trans)
