"""Input mixing: augmented copies of a batch made on the device after the data pipeline, for any method (the
augmentation-driven KD of Good-DA-in-KD / DS-SRD). Every mode returns a `Mixed` batch that says, per row,
which original row it mostly shows (`source`), which one was mixed in (`partner`) and the fraction of
`source` in it (`lam`, 1 where nothing was mixed), so mixed labels and interpolated targets are one formula.

    identity    the batch itself
    flip        each image mirrored left-right with probability 1/2
    crop+flip   each image padded by size/8 (black) and cropped at its own random offset, then flipped
    cutout      each image gets one hole of side size/4 (8 on 32x32) at its own uniform centre, clipped
    autoaugment torchvision's AutoAugment, CIFAR10 policy, each image its own draw (on uint8 pixels)
    mixup       lam ~ Beta(1, 1), one per batch: lam x + (1 - lam) x[partner]
    cutmix      lam ~ Beta(1, 1); a box of side ratio sqrt(1 - lam), uniform centre, clipped, pasted from the
                partner; lam recomputed from the clipped box's area (one box per batch, as CutMix)
    cutmix_pick cutmix n_run times, score the pool of n_run * B images, keep the B highest scores

The partner comes from a permutation without fixed points. All draws use torch's global CPU generator (part of
every checkpoint's RNG state), so a resumed run mixes exactly as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from kdzoo.core.host_sync import host_side, to_device
from kdzoo.data.batched_transforms import crop_at, flip_where
from kdzoo.errors import ConfigError

MODES = ("identity", "flip", "crop+flip", "cutout", "autoaugment", "mixup", "cutmix", "cutmix_pick")
MIXING_MODES = ("mixup", "cutmix", "cutmix_pick")  # modes whose rows show two images


@dataclass
class Mixed:
    inputs: Tensor
    source: Tensor  # (B',) row of the original batch each image shows (mostly)
    partner: Tensor  # (B',) row mixed in; == source where nothing was mixed
    lam: Tensor  # (B',) fraction of `source` in each image
    picked: Optional[Tensor] = None  # cutmix_pick: the rows of the scored pool that were kept

    def interpolate(self, values: Tensor) -> Tensor:
        """Per-row values of the original batch mixed as the images were (e.g. the teacher's logits)."""
        lam = self.lam.to(values.dtype).view(-1, *([1] * (values.dim() - 1)))
        return lam * values[self.source] + (1 - lam) * values[self.partner]


@dataclass(frozen=True)
class PixelStats:
    """The normalisation of the batch (per-channel mean and std), to undo it for pixel-space operations."""

    mean: Sequence[float]
    std: Sequence[float]

    def _shape(self, x: Tensor, values) -> Tensor:
        return to_device(torch.as_tensor(values, dtype=x.dtype), x.device).view(1, -1, 1, 1)

    def black(self, x: Tensor) -> Tensor:
        """What a zero pixel is after normalisation, per channel, broadcastable over x."""
        return -self._shape(x, self.mean) / self._shape(x, self.std)

    def to_uint8(self, x: Tensor) -> Tensor:
        pixels = x * self._shape(x, self.std) + self._shape(x, self.mean)
        return (pixels * 255).round().clamp(0, 255).to(torch.uint8)

    def from_uint8(self, x: Tensor, like: Tensor) -> Tensor:
        pixels = x.to(like.dtype) / 255
        return (pixels - self._shape(like, self.mean)) / self._shape(like, self.std)


def derangement(n: int) -> Tensor:
    """A random permutation of range(n) with no fixed point (the identity when n < 2)."""
    if n < 2:
        return torch.arange(n)
    while True:
        perm = torch.randperm(n)
        with host_side():  # torch's CPU generator: no device read
            fixed = bool((perm == torch.arange(n)).any())
        if not fixed:
            return perm


def _unmixed(x: Tensor, inputs: Tensor) -> Mixed:
    rows = torch.arange(x.shape[0], device=x.device)
    return Mixed(inputs, rows, rows, torch.ones(x.shape[0], device=x.device))


def flip(x: Tensor) -> Tensor:
    return flip_where(x, to_device(torch.rand(x.shape[0]) < 0.5, x.device))


def pad_crop(x: Tensor, padding: int, fill: Tensor) -> Tensor:
    """Each image padded with `fill` and cropped back to its size at its own random offset."""
    b, c, h, w = x.shape
    padded = fill.expand(b, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding:padding + h, padding:padding + w] = x
    top = to_device(torch.randint(0, 2 * padding + 1, (b,)), x.device)
    left = to_device(torch.randint(0, 2 * padding + 1, (b,)), x.device)
    return crop_at(padded, top, left, h, w)


def cutout(x: Tensor, side: int) -> Tensor:
    """One hole per image (Cutout's defaults: centre uniform over the image, the square clipped to it)."""
    b, _, h, w = x.shape
    cy, cx = torch.randint(0, h, (b,)), torch.randint(0, w, (b,))
    y1, y2 = (cy - side // 2).clamp(0, h), (cy + side // 2).clamp(0, h)
    x1, x2 = (cx - side // 2).clamp(0, w), (cx + side // 2).clamp(0, w)
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    hole = ((ys >= y1.view(b, 1, 1)) & (ys < y2.view(b, 1, 1)) & (xs >= x1.view(b, 1, 1)) & (xs < x2.view(b, 1, 1)))
    return x * (~hole).to(x.device, x.dtype).unsqueeze(1)


def cutmix_box(h: int, w: int, lam: float, centre: Optional[tuple[int, int]] = None) -> tuple[int, int, int, int]:
    """(y1, y2, x1, x2) of CutMix's box for area ratio 1 - lam: sides int(size * sqrt(1 - lam)), centre
    uniform (or given), clipped to the image."""
    ratio = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    if centre is None:
        with host_side():
            centre = (int(torch.randint(0, h, ())), int(torch.randint(0, w, ())))
    cy, cx = centre
    return (min(max(cy - cut_h // 2, 0), h), min(max(cy + cut_h // 2, 0), h),
            min(max(cx - cut_w // 2, 0), w), min(max(cx + cut_w // 2, 0), w))


def beta_1_1() -> float:
    with host_side():  # a CPU draw: no device read
        return float(torch.rand(()))  # Beta(1, 1) is uniform on (0, 1)


def cutmix(x: Tensor) -> Mixed:
    b, _, h, w = x.shape
    lam = beta_1_1()
    y1, y2, x1, x2 = cutmix_box(h, w, lam)
    partner = to_device(derangement(b), x.device)
    mixed = x.clone()
    mixed[:, :, y1:y2, x1:x2] = x[partner][:, :, y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)  # what the clipped box really left of each image
    rows = torch.arange(b, device=x.device)
    return Mixed(mixed, rows, partner, torch.full((b,), lam, device=x.device))


def mixup(x: Tensor) -> Mixed:
    lam = beta_1_1()
    partner = to_device(derangement(x.shape[0]), x.device)
    rows = torch.arange(x.shape[0], device=x.device)
    return Mixed(lam * x + (1 - lam) * x[partner], rows, partner, torch.full((x.shape[0],), lam, device=x.device))


def cutmix_pick(x: Tensor, n_run: int, score: Callable[[Tensor], Tensor]) -> Mixed:
    """cutmix `n_run` times; keep the B images of the pool with the highest `score` (computed without grads)."""
    runs = [cutmix(x) for _ in range(n_run)]
    pool = Mixed(torch.cat([r.inputs for r in runs]), torch.cat([r.source for r in runs]),
                 torch.cat([r.partner for r in runs]), torch.cat([r.lam for r in runs]))
    with torch.no_grad():
        scores = score(pool.inputs).float()
    keep = scores.topk(x.shape[0]).indices
    return Mixed(pool.inputs[keep], pool.source[keep], pool.partner[keep], pool.lam[keep], picked=keep)


_AUTOAUGMENT = None


def autoaugment(x: Tensor, stats: PixelStats) -> Tensor:
    global _AUTOAUGMENT
    if _AUTOAUGMENT is None:
        from torchvision.transforms import AutoAugment, AutoAugmentPolicy

        _AUTOAUGMENT = AutoAugment(AutoAugmentPolicy.CIFAR10)
    pixels = stats.to_uint8(x.float()).cpu()
    augmented = torch.stack([_AUTOAUGMENT(image) for image in pixels]).to(x.device)
    return stats.from_uint8(augmented, x.float()).to(x.dtype)


def check_mode(mode: str, n_run: int = 2, where: str = "input mixing") -> None:
    if mode not in MODES:
        raise ConfigError(f"{where}.mode: unknown input-mixing mode {mode!r} (modes: {', '.join(MODES)})")
    if n_run < 1:
        raise ConfigError(f"{where}.n_run: must be >= 1, got {n_run}")


def mix_inputs(mode: str, x: Tensor, stats: PixelStats, n_run: int = 2,
               score: Optional[Callable[[Tensor], Tensor]] = None) -> Mixed:
    """The augmented batch of `mode` (see the module docstring); `score` ranks cutmix_pick's pool."""
    check_mode(mode, n_run)
    if x.dim() != 4:
        raise ConfigError(f"input mixing {mode}: needs image batches (B, C, H, W), got shape {tuple(x.shape)}")
    size = min(x.shape[-2:])
    memory = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 \
        else torch.contiguous_format
    mixed = _mix(mode, x, stats, n_run, score, size)
    mixed.inputs = mixed.inputs.contiguous(memory_format=memory)
    return mixed


def _mix(mode, x, stats, n_run, score, size) -> Mixed:
    if mode == "identity":
        return _unmixed(x, x)
    if mode == "flip":
        return _unmixed(x, flip(x))
    if mode == "crop+flip":
        return _unmixed(x, flip(pad_crop(x, max(1, round(size / 8)), stats.black(x))))
    if mode == "cutout":
        return _unmixed(x, cutout(x, max(1, round(size / 4))))
    if mode == "autoaugment":
        return _unmixed(x, autoaugment(x, stats))
    if mode == "mixup":
        return mixup(x)
    if mode == "cutmix":
        return cutmix(x)
    if score is None:
        raise ValueError("cutmix_pick needs a score function")
    return cutmix_pick(x, n_run, score)
