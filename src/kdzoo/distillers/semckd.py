"""SemCKD: cross-layer distillation with semantic calibration (Chen et al., AAAI 2021).

Every student stage map is paired with every teacher stage map (stages[1:] of each, RepDistiller's feat[1:-1]).
Per layer l a batch similarity matrix G_l = F_l F_l^T (B x B, F_l the flattened map) is embedded row by row by a
query MLP (student layers) or key MLP (teacher layers): Linear(B, 2*(B//4)) -> ReLU -> Linear(-, B//4) -> L2
normalise. Sample b's attention of student layer i over teacher layers j is

    alpha[b, i, :] = softmax_j(<q_i[b], k_j[b]> / soft)

For each pair (i, j) the larger map is average-pooled to the smaller spatial size and the student map goes through
a projector Proj_ij (1x1 conv -> 2*C_t, BN, ReLU, 3x3 conv, BN, ReLU, 1x1 conv -> C_t; convs without bias). With
d[b, i, j] = mean over (C, H, W) of (Proj_ij(f_s_i)[b] - f_t_j[b])^2,

    L_semckd = sum_{b,i,j} alpha[b, i, j] * d[b, i, j] / (B * n_student_layers)

The attention is not detached: the loss trains the MLPs. Because the MLPs take B inputs the batch size is fixed
(`requires.full_batches`: the loader drops the last partial batch) and they are built from `ctx.batch_size`.

Follows DefangChen/SimKD (models/util.py SelfA, Proj, MLPEmbed; distiller_zoo/SemCKD.py); deviations: MLPEmbed's
unused `regressor` Sequential is not created (it never runs, but its parameters joined the optimizer there), the L2
normalisation has an epsilon, and the embedding width is at least 1 for batches under 4.
Under torchrun the B x B similarities are over each process's own batch (B = the per-process batch size).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import Method, Recipes, Requires
from kdzoo.distillers.common import match_spatial
from kdzoo.distillers.registry import register_method
from kdzoo.errors import IncompatiblePairError, KdzooError
from kdzoo.models.features import Needs


class SemCKDProjector(nn.Sequential):
    """1x1 conv -> 2*C_t, BN, ReLU, 3x3 conv, BN, ReLU, 1x1 conv -> C_t (SimKD repo's Proj)."""

    def __init__(self, s_channels: int, t_channels: int):
        mid = 2 * t_channels
        super().__init__(
            nn.Conv2d(s_channels, mid, kernel_size=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, t_channels, kernel_size=1, bias=False),
        )


class SimilarityEmbed(nn.Module):
    """Rows of a B x B similarity matrix -> L2-normalised embeddings (B -> 2*(B//factor) -> B//factor)."""

    def __init__(self, batch_size: int, factor: int = 4):
        super().__init__()
        dim = max(batch_size // factor, 1)
        self.linear1 = nn.Linear(batch_size, 2 * dim)
        self.linear2 = nn.Linear(2 * dim, dim)

    def forward(self, sim: Tensor) -> Tensor:
        return F.normalize(self.linear2(F.relu(self.linear1(sim))), dim=1)


def similarity(feat: Tensor) -> Tensor:
    """G = F F^T over the batch, F the flattened map, in float32."""
    flat = feat.float().flatten(1)
    return flat @ flat.t()


def semckd_loss(attention: Tensor, pair_losses: Tensor) -> Tensor:
    """sum_{b,i,j} alpha * d / (B * n_student_layers); both (B, S, T)."""
    bsz, n_s, _ = attention.shape
    return (attention * pair_losses).sum() / (bsz * n_s)


@dataclass
class SemCKDParams:
    soft: float = 1.0  # attention temperature (train_student.py --soft)
    factor: int = 4  # query/key embedding width = batch_size // factor (SelfA's factor)


@register_method
class SemCKD(Method):
    name = "semckd"
    reference = "DefangChen/SemCKD"  # the code its tests compare against
    description = "SemCKD: every student stage to every teacher stage, weighted by per-sample layer attention"
    paper = "Chen et al., Cross-Layer Distillation with Semantic Calibration, AAAI 2021"
    student_needs = Needs(stages=True)
    teacher_needs = Needs(stages=True)
    requires = Requires(full_batches=True)
    recipes = Recipes(loss={"ce": 1.0, "kd": 1.0, "semckd": 400.0})
    Params = SemCKDParams
    # DefangChen/SimKD scripts/run_distill.sh: --distill semckd -c 1 -d 1 -b 400 (CE 1, KD 1 at T=4, beta 400)

    def __init__(self, params: SemCKDParams, ctx):
        super().__init__(params, ctx)
        if ctx.teacher_shapes is None:
            raise IncompatiblePairError("semckd: needs a teacher")
        s_stages = list(ctx.student_shapes.stages or [])[1:]
        t_stages = list(ctx.teacher_shapes.stages or [])[1:]
        if not s_stages or not t_stages:
            raise IncompatiblePairError("semckd: both networks need at least one stage after the stem")
        if params.factor < 1 or params.soft <= 0:
            raise IncompatiblePairError("semckd: factor must be >= 1 and soft > 0")
        self.batch_size = int(ctx.batch_size)
        self.n_s, self.n_t = len(s_stages), len(t_stages)
        self.query = nn.ModuleList(SimilarityEmbed(self.batch_size, params.factor) for _ in s_stages)
        self.key = nn.ModuleList(SimilarityEmbed(self.batch_size, params.factor) for _ in t_stages)
        # projectors[i * n_t + j]: student layer i -> teacher layer j
        self.projectors = nn.ModuleList(SemCKDProjector(s[1], t[1]) for s in s_stages for t in t_stages)

    def attention(self, s_maps: list[Tensor], t_maps: list[Tensor]) -> Tensor:
        """alpha (B, n_s, n_t): per sample and student layer, a softmax over teacher layers."""
        # float32 throughout (tiny B x B inputs): unnormalised similarities can exceed the fp16 range
        with torch.autocast(s_maps[0].device.type, enabled=False):
            q = torch.stack([mlp(similarity(f)) for mlp, f in zip(self.query, s_maps)], dim=1)  # (B, S, d)
            k = torch.stack([mlp(similarity(f)) for mlp, f in zip(self.key, t_maps)], dim=1)  # (B, T, d)
            energy = torch.bmm(q, k.transpose(1, 2)) / self.params.soft
        return energy.softmax(dim=-1)

    def pair_losses(self, s_maps: list[Tensor], t_maps: list[Tensor]) -> Tensor:
        """d (B, n_s, n_t): per-sample MSE of each projected student map against each teacher map."""
        columns = []
        for i, fs in enumerate(s_maps):
            for j, ft in enumerate(t_maps):
                fs_ij, ft_ij = match_spatial(fs, ft)  # the larger map pooled to the smaller one's size
                diff = self.projectors[i * self.n_t + j](fs_ij).float() - ft_ij.float()
                columns.append(diff.pow(2).flatten(1).mean(dim=1))
        return torch.stack(columns, dim=1).view(-1, self.n_s, self.n_t)

    def losses(self, batch, s, t, step):
        s_maps, t_maps = s.stages[1:], t.stages[1:]
        if s_maps[0].shape[0] != self.batch_size:
            raise KdzooError(f"semckd: built for batches of {self.batch_size} (dataset.batch_size), got "
                             f"{s_maps[0].shape[0]}; its query/key MLPs take the batch size as input width")
        alpha = self.attention(s_maps, t_maps)
        return {"semckd": semckd_loss(alpha, self.pair_losses(s_maps, t_maps))}
