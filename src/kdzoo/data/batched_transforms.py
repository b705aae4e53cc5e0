"""The per-sample transforms of `data/transforms.py` as one batched call each, drawing from a given generator
(`loader: device`). Each keeps its per-image distribution: pad-crop offsets uniform over the 2p + 1 positions per
axis, flips with probability p, each image on its own draw; normalisation is the same arithmetic as `Normalize`,
so an unaugmented batch equals the PyTorch loader's bit for bit."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from kdzoo.data.transforms import Normalize, PadRandomCrop, RandomHorizontalFlip

BatchedStep = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def pad_random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Each image zero-padded by `padding` and cropped back to its size at its own offset (top, left), each
    uniform on 0..2 * padding."""
    b, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=x.device)
    padded = F.pad(x, (padding,) * 4)
    rows = (offsets[0].view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * padding)
    picked = padded.gather(2, rows)
    cols = (offsets[1].view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return picked.gather(3, cols)


def random_flip(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability `p`."""
    chosen = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(chosen.view(-1, 1, 1, 1), x.flip(-1), x)


class BatchedNormalize:
    """`Normalize` over a batch: (N, C, H, W) uint8 or float in [0, 1] -> float32, the same addcmul per pixel."""

    def __init__(self, step: Normalize):
        self.step, self._device = step, None

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self._device != x.device:  # the constants, once per device
            self._device = x.device
            self._shift = self.step._shift.to(x.device)
            self._scales = {torch.uint8: self.step._uint8_scale.to(x.device)}
            self._float = self.step._float_scale.to(x.device)
        scale = self._scales.get(x.dtype, self._float)
        return torch.addcmul(self._shift, x.to(torch.float32), scale)


def batched_step(step) -> Optional[BatchedStep]:
    """The batched form of a per-sample pipeline step, or None where there is none."""
    if isinstance(step, PadRandomCrop):
        return lambda x, g, p=step.padding: pad_random_crop(x, p, g)
    if isinstance(step, RandomHorizontalFlip):
        return lambda x, g, p=step.p: random_flip(x, p, g)
    if isinstance(step, Normalize):
        return BatchedNormalize(step)
    if isinstance(step, v2.Resize):  # deterministic: the same op over the batch
        return lambda x, g, resize=step: resize(x)
    return None
