"""Evaluators: what a phase measures after its epochs. Each returns metrics named `<stream>_<metric>` (or
`<stream>_<head>_<metric>`); the phase's `select` names the one that picks the best checkpoint.

ClassifierEvaluator is top-1/top-5/loss of one network on one stream; HeadsEvaluator the same for every named
output of a network with several heads; MetricEvaluator is the hook for any other measure (linear probe, kNN):
a function of the runtime that returns its metrics; `knn_monitor` is the kNN one of runs without labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.core.dist import DistInfo, all_gather_cat, all_reduce_sum, broadcast_buffers

if TYPE_CHECKING:
    from kdzoo.program.program import Runtime


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device, dist_info: DistInfo = DistInfo(),
             channels_last: bool = False) -> dict[str, float]:
    """Top-1/top-5 accuracy and loss of `model` on `loader`, exact across processes. Evaluated in fp32:
    accuracy figures should not depend on the training precision."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss sum, count
    for raw in loader:
        images, targets = raw[0].to(device, non_blocking=True), raw[1].to(device, non_blocking=True)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        sums += batch_sums(model(images).float(), targets)
    all_reduce_sum(sums, dist_info)
    model.train(was_training)
    correct1, correct5, loss, count = sums.tolist()  # the one host read of the evaluation
    n = max(count, 1.0)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss / n, "n": int(count)}


def batch_sums(logits: Tensor, targets: Tensor) -> Tensor:
    """(correct@1, correct@5, loss sum, count) of a batch as float64 on its device, so that an evaluation reads
    the host once, at its end, not per batch (each read waits for the GPU)."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
    count = torch.full((), targets.numel(), dtype=torch.float64, device=logits.device)
    return torch.stack([top[:, 0].sum().double(), top.any(dim=1).sum().double(),
                        F.cross_entropy(logits, targets, reduction="sum").double(), count])


@dataclass
class OneLoader:
    """A Runtime over one loader: evaluating a checkpoint outside a run (`kdzoo eval`)."""

    data: object
    device: torch.device
    dist: DistInfo = DistInfo()
    channels_last: bool = False

    def loader(self, stream: str):
        return self.data


@dataclass
class ClassifierEvaluator:
    """Metrics `<stream>_top1` ..., or `<stream>_<name>_top1` ... when several networks are evaluated."""

    model: Callable[[], nn.Module]
    stream: str = "test"
    name: str = ""

    def __call__(self, rt: Runtime) -> dict[str, float]:
        model = self.model()
        broadcast_buffers(model, rt.dist)
        metrics = evaluate(model, rt.loader(self.stream), rt.device, rt.dist, rt.channels_last)
        prefix = f"{self.stream}_{self.name}_" if self.name else f"{self.stream}_"
        return {f"{prefix}{k}": v for k, v in metrics.items() if k != "n"}


@dataclass
class HeadsEvaluator:
    """`heads(model(x))` -> {head name: logits}; top-1/top-5 per head, exact across processes. A model that
    gives `rows_per_sample` rows per input (e.g. its 4 rotations, image-major) is scored on each row."""

    model: Callable[[], nn.Module]
    heads: Callable[[object], dict[str, Tensor]] = dict
    stream: str = "test"
    rows_per_sample: int = 1

    @torch.inference_mode()
    def __call__(self, rt: Runtime) -> dict[str, float]:
        model = self.model()
        broadcast_buffers(model, rt.dist)
        was_training = model.training
        model.eval()
        sums: dict[str, Tensor] = {}
        for raw in rt.loader(self.stream):
            images = raw[0].to(rt.device, non_blocking=True)
            targets = raw[1].to(rt.device, non_blocking=True).repeat_interleave(self.rows_per_sample)
            for name, logits in self.heads(model(images)).items():
                row = batch_sums(logits.float(), targets)
                sums[name] = sums[name] + row if name in sums else row
        model.train(was_training)
        out = {}
        for name, total in sums.items():
            all_reduce_sum(total, rt.dist)
            correct1, correct5, loss, count = total.tolist()
            n = max(count, 1.0)
            out.update({f"{self.stream}_{name}_top1": 100.0 * correct1 / n,
                        f"{self.stream}_{name}_top5": 100.0 * correct5 / n,
                        f"{self.stream}_{name}_loss": loss / n})
        if sums:  # the best head (what HSAKD selects its teachers on)
            out[f"{self.stream}_heads_top1"] = max(out[f"{self.stream}_{name}_top1"] for name in sums)
        return out


@dataclass
class MetricEvaluator:
    """Any measure: `fn(runtime) -> {name: value}` (names should start with the stream they read)."""

    fn: Callable[[Runtime], dict[str, float]]

    def __call__(self, rt: Runtime) -> dict[str, float]:
        return dict(self.fn(rt))


KNN = 20


def knn_monitor(network: nn.Module, k: int = KNN):
    """test_knn_top1 of `network`'s pooled features: majority vote of the k most cosine-similar training images."""

    @torch.no_grad()
    def measure(rt) -> dict[str, float]:
        broadcast_buffers(network, rt.dist)  # the target's BN statistics differ per process (its own shards)
        was = network.training
        network.eval()

        def embed(stream: str) -> tuple[Tensor, Tensor]:
            rows, labels = [], []
            for raw in rt.loader(stream):
                rows.append(F.normalize(network(raw[0].to(rt.device)).pooled.float(), dim=1))
                labels.append(raw[1].to(rt.device))
            return all_gather_cat(torch.cat(rows)), all_gather_cat(torch.cat(labels))

        bank, bank_labels = embed("probe")
        test, test_labels = embed("test")
        network.train(was)
        votes = bank_labels[(test @ bank.t()).topk(min(k, len(bank)), dim=1).indices]
        predicted = torch.mode(votes, dim=1).values
        return {"test_knn_top1": 100.0 * float((predicted == test_labels).float().mean())}

    return measure
