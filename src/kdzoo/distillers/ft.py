"""FT, factor transfer: the student's translated last stage map imitates the teacher's paraphrased one.

Init stage (`init_epochs`, default 30): a paraphraser, a convolutional autoencoder on the teacher's last stage
map f_t (C channels; encoder 3x3 convs C -> C -> kC -> kC, decoder 3x3 transposed convs kC -> kC -> C -> C,
each followed by LeakyReLU(0.1), BN between them only with `use_bn`; k = 0.5), learns to reconstruct f_t:
init term  ft = mean (decoder(encoder(f_t)) - f_t)^2.  Only the paraphraser trains.

Main stage: the paraphraser is frozen (eval mode, no gradients, out of the optimizer's updates) and gives the
teacher factor e = encoder(f_t); a translator (the same encoder shape from the student's C_s channels to kC,
with BN) gives the student factor u = translator(f_s) from the student's last stage map. After pooling the
larger factor map to the smaller size, with phi(x) = L2-normalise(mean_c x^p1 flattened) per sample,

    ft = mean_{b, hw} |phi(u) - phi(e)|^p2,      p1 = 2, p2 = 1,

as RepDistiller's distiller_zoo/FT.py (FactorTransfer) and models/util.py (Paraphraser, Translator). The FT
paper (and its authors' code) normalises the whole flattened factor instead: `p1: 0` selects that. Where the
compared factor maps are 1x1 (small inputs, e.g. 8x8 digits into a ShuffleNet), the channel mean has a single
entry, normalises to 1 and would make the loss identically zero: there the paper's factor (p1 0) is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.distillers.base import InitStage, Method, Recipes
from kdzoo.distillers.common import match_spatial
from kdzoo.distillers.registry import register_method
from kdzoo.errors import ConfigError
from kdzoo.models.features import Needs

# RepDistiller's helper/pretrain.py trains the paraphraser with lr 0.01 for these students.
_INIT_LR_001 = {"resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
                "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"}


@dataclass
class FTParams:
    k: float = 0.5  # paraphrase rate: factor channels = int(k * teacher channels)
    p1: float = 2.0  # factor = normalise(mean_c x^p1) (RepDistiller); 0: normalise(flatten(x)) (the paper)
    p2: float = 1.0  # distance exponent: 1 = L1
    use_bn: bool = False  # BN inside the paraphraser (RepDistiller: False; the translator always has BN)
    init_epochs: int = 30  # epochs of the paraphraser's init stage
    init_lr: Optional[float] = None  # lr of the init stage; None: the run's lr


def _conv_stack(c_in: int, c_out: int, use_bn: bool, transposed: bool = False) -> nn.Sequential:
    """Three 3x3 stride-1 (transposed) convs c_in -> c_in -> c_out -> c_out, each with [BN] and LeakyReLU(0.1)."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for a, b in [(c_in, c_in), (c_in, c_out), (c_out, c_out)]:
        layers.append(conv(a, b, 3, 1, 1))
        if use_bn:
            layers.append(nn.BatchNorm2d(b))
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Autoencoder on the teacher's map: encoder C -> C -> kC -> kC, decoder kC -> kC -> C -> C."""

    def __init__(self, channels: int, factor_channels: int, use_bn: bool):
        super().__init__()
        self.encoder = _conv_stack(channels, factor_channels, use_bn)
        self.decoder = _conv_stack(factor_channels, channels, use_bn, transposed=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def factor(x: Tensor, p1: float) -> Tensor:
    """L2-normalised (B, -1) factor: mean over channels of x^p1 (p1 > 0), or the whole map flattened (p1 0)."""
    x = x.float()
    flat = x.flatten(1) if p1 == 0 else x.pow(p1).mean(1).flatten(1)
    return F.normalize(flat, dim=1)


def factor_transfer_loss(u: Tensor, e: Tensor, p1: float = 2.0, p2: float = 1.0) -> Tensor:
    """Factor transfer: mean |F(u) - F(e)|^p2 between the L2-normalised (p1) flattened factors of the student's
    translator output u and the teacher's paraphraser code e, the larger map pooled to the smaller
    (RepDistiller FactorTransfer)."""
    u, e = match_spatial(u, e)
    diff = (factor(u, p1) - factor(e, p1)).abs()
    return (diff if p2 == 1 else diff.pow(p2)).mean()


@register_method
class FT(Method):
    name = "ft"
    reference = "HobbitLong/RepDistiller"  # the code its tests compare against
    description = "FT: a translator of the student's last map imitates the factors of a teacher paraphraser"
    paper = "Kim et al., Paraphrasing Complex Network: Network Compression via Factor Transfer, NeurIPS 2018"
    student_needs = Needs(stages=True)
    teacher_needs = Needs(stages=True)
    Params = FTParams
    recipes = Recipes(loss={"ce": 1.0, "ft": 200.0})

    def __init__(self, params: FTParams, ctx):
        super().__init__(params, ctx)
        if not 0 < params.k <= 1:
            raise ConfigError(f"methods.ft.k: must be in (0, 1], got {params.k}")
        if params.p1 < 0 or params.p2 <= 0:
            raise ConfigError("methods.ft: p1 must be >= 0 and p2 > 0")
        c_s, c_t = ctx.student_shapes.stages[-1][1], ctx.teacher_shapes.stages[-1][1]
        c_f = max(int(c_t * params.k), 1)
        self.paraphraser = Paraphraser(c_t, c_f, params.use_bn)
        self.translator = _conv_stack(c_s, c_f, use_bn=True)
        self._frozen = False
        s_hw, t_hw = ctx.student_shapes.stages[-1][-2:], ctx.teacher_shapes.stages[-1][-2:]
        pixels = min(s_hw[0] * s_hw[1], t_hw[0] * t_hw[1])
        self.p1 = params.p1 if pixels > 1 else 0.0  # a 1x1 channel mean carries no signal (see above)

    @classmethod
    def pair_overrides(cls, teacher: str, student: str) -> dict:
        return {"methods": {"ft": {"init_lr": 0.01}}} if student in _INIT_LR_001 else {}

    # Init stage: the paraphraser alone learns to reconstruct the teacher's map. -------------------------------
    def init_stage(self):
        if self.params.init_epochs <= 0:
            return None
        return InitStage(epochs=self.params.init_epochs, modules=[self.paraphraser], weights={"ft": 1.0},
                         lr=self.params.init_lr, needs_student=False)

    def init_losses(self, batch, s, t, step):
        f_t = t.stages[-1]
        return {"ft": F.mse_loss(self.paraphraser(f_t).float(), f_t.float())}

    # Main stage: the frozen paraphraser's encoder gives the target factor. ----------------------------------
    def freeze_paraphraser(self) -> None:
        """No gradients and eval mode for the paraphraser from now on (called at the first main-stage step)."""
        self._frozen = True
        self.paraphraser.requires_grad_(False)
        self.paraphraser.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self._frozen:
            self.paraphraser.eval()
        return self

    def losses(self, batch, s, t, step):
        if not self._frozen:
            self.freeze_paraphraser()
        with torch.no_grad():
            e = self.paraphraser.encoder(t.stages[-1])
        u = self.translator(s.stages[-1])
        return {"ft": factor_transfer_loss(u, e, self.p1, self.params.p2)}
