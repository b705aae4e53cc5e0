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


def crop_at(padded: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Each padded image's h x w window at its own (top, left): two gathers, no per-image loop."""
    b, c, _, padded_w = padded.shape
    rows = (top.view(b, 1) + torch.arange(h, device=padded.device)).view(b, 1, h, 1).expand(b, c, h, padded_w)
    cols = (left.view(b, 1) + torch.arange(w, device=padded.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def flip_where(x: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The images of `chosen` (a bool per image) mirrored left-right."""
    return torch.where(chosen.view(-1, 1, 1, 1), x.flip(-1), x)


def pad_random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Each image zero-padded by `padding` and cropped back to its size at its own offset (top, left), each
    uniform on 0..2 * padding."""
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=x.device)
    return crop_at(F.pad(x, (padding,) * 4), offsets[0], offsets[1], h, w)


def random_flip(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability `p`."""
    return flip_where(x, torch.rand(x.shape[0], generator=generator, device=x.device) < p)


class BatchedNormalize:
    """`Normalize` over a batch: (N, C, H, W) uint8 or float in [0, 1] -> float32, the same addcmul per pixel."""

    def __init__(self, step: Normalize):
        self.step, self._device = step, None

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self._device != x.device:  # the constants, once per device
            self._device = x.device
            self._shift, self._uint8, self._float = (t.to(x.device) for t in (
                self.step._shift, self.step._uint8_scale, self.step._float_scale))
        scale = self._uint8 if x.dtype == torch.uint8 else self._float
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


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luminance, torchvision's weights (0.2989, 0.587, 0.114); one-channel images as they are."""
    from torchvision.transforms.v2.functional._color import _rgb_to_grayscale_image

    return x if x.shape[1] == 1 else _rgb_to_grayscale_image(x, num_output_channels=1, preserve_dtype=False)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (a * ratio + b * (1.0 - ratio)).clamp(0.0, 1.0)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

    if x.shape[1] == 1:  # as torchvision (and PIL): no hue in one channel
        return x
    h, s, v = _rgb_to_hsv(x).unbind(dim=1)
    return _hsv_to_rgb(torch.stack(((h + shift.view(-1, 1, 1)).remainder(1.0), s, v), dim=1))


# ColorJitter's operations in its own numbering (fn_idx): brightness, contrast, saturation, hue
_JITTER_OPS = (
    lambda x, f: (x * f).clamp(0.0, 1.0),
    lambda x, f: _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f),
    lambda x, f: x if x.shape[1] == 1 else _blend(x, _gray(x), f),
    lambda x, f: _hue(x, f),
)


def jitter_params(jitter: v2.ColorJitter, b: int, p_apply: float, generator: torch.Generator,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Per image what v2.RandomApply([ColorJitter], p_apply) draws: whether it applies, a uniformly random order of
    the four operations, and each operation's factor uniform in its range (None where the jitter has none)."""
    def uniform(bounds):
        if bounds is None:
            return None
        low, high = bounds
        return low + (high - low) * torch.rand(b, generator=generator, device=device)

    return {"apply": torch.rand(b, generator=generator, device=device) < p_apply,
            "order": torch.rand(b, 4, generator=generator, device=device).argsort(dim=1),
            "factors": [uniform(jitter.brightness), uniform(jitter.contrast), uniform(jitter.saturation),
                        uniform(jitter.hue)]}


def colour_jitter(x: torch.Tensor, params: dict) -> torch.Tensor:
    """ColorJitter with per-image factors and order on a [0, 1] batch: at each of the 4 positions, every operation
    is computed over the batch and kept for the images whose order puts it there (no data-dependent shapes)."""
    out = x
    for position in range(4):
        for op, (fn, factor) in enumerate(zip(_JITTER_OPS, params["factors"])):
            if factor is None:
                continue
            chosen = params["apply"] & (params["order"][:, position] == op)
            out = torch.where(chosen.view(-1, 1, 1, 1), fn(out, factor.view(-1, 1, 1, 1)), out)
    return out


class BatchedPixelJitter:
    """`views.PixelAugment` with colour-jitter ops (RandomApply([ColorJitter], p), RandomGrayscale(p)) over a batch:
    the normalised batch back to [0, 1] pixels, jittered per image, greyed per image, normalised again."""

    def __init__(self, jitter: v2.ColorJitter, p_apply: float, p_gray: float, mean, std):
        self.jitter, self.p_apply, self.p_gray = jitter, p_apply, p_gray
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        pixels = (x * self.std + self.mean).clamp(0, 1)
        out = colour_jitter(pixels, jitter_params(self.jitter, x.shape[0], self.p_apply, generator, x.device))
        grey = torch.rand(x.shape[0], generator=generator, device=x.device) < self.p_gray
        out = torch.where(grey.view(-1, 1, 1, 1), _gray(out).expand_as(out), out)
        return (out - self.mean) / self.std


def batched_pixel_ops(ops, mean, std) -> Optional[BatchedPixelJitter]:
    """The batched form of a PixelAugment's ops when they are colour jitter (views.colour_jitter()), else None."""
    steps = list(getattr(ops, "transforms", [ops]))
    if not 1 <= len(steps) <= 2:
        return None
    first, rest = steps[0], steps[1:]
    if isinstance(first, v2.RandomApply) and len(first.transforms) == 1 \
            and isinstance(first.transforms[0], v2.ColorJitter):
        jitter, p_apply = first.transforms[0], first.p
    elif isinstance(first, v2.ColorJitter):
        jitter, p_apply = first, 1.0
    else:
        return None
    if rest and not isinstance(rest[0], v2.RandomGrayscale):
        return None
    p_gray = rest[0].p if rest else 0.0
    return BatchedPixelJitter(jitter, p_apply, p_gray, mean, std)
