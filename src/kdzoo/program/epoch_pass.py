"""Per-epoch passes over the training images for methods that need them (DS-SRD's k-means over the teacher's
embedding): the `probe` stream holds the training images under the evaluation-style `plain` pipeline, in
dataset order, with their indices; `EpochPasses.embed` runs a network over it without gradients.

A method asks with `epoch_passes = True`; its `on_epoch_start(epoch, passes)` then gets an EpochPasses (None
otherwise) and may return numbers to log on the epoch's metrics line (e.g. what its pass cost).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from kdzoo.core.dist import all_gather_cat, broadcast_buffers

PROBE = "probe"


def attach_probe(streams: dict, methods, cfg, device, always: bool = False) -> None:
    """Add the probe stream when a method asks for epoch passes, or `always` (a stream the caller gave is kept)."""
    if PROBE in streams or not (always or any(m.requires.epoch_passes for m in methods)):
        return
    from kdzoo.data.recipe_streams import probe_stream

    streams[PROBE] = probe_stream(cfg.dataset, streams["train"], seed=cfg.seed, device=device,
                                  channels_last=cfg.engine.channels_last)


class EpochPasses:
    """What a method's on_epoch_start may run: `embed(network, what)` = the network's `what` (pooled, logits)
    for every training image, (N, D) float32 in dataset order, on the device, the network in eval mode (its
    running BN statistics; a target that trains in train mode, like BYOL's, is put back in it after)."""

    def __init__(self, runtime: Any, sources: Mapping[str, Callable[[Tensor], Any]], stream: str = PROBE):
        self.runtime, self.sources, self.stream = runtime, sources, stream

    @property
    def size(self) -> int:
        return len(self.runtime.stream(self.stream).dataset)

    @torch.no_grad()
    def embed(self, network: str, what: str = "pooled") -> Tensor:
        stream = self.runtime.stream(self.stream)
        source = self.sources[network]
        if isinstance(source, torch.nn.Module):  # BN statistics a network keeps per process (BYOL's target)
            broadcast_buffers(source, self.runtime.dist)
        modes = [(m, m.training) for m in source.modules()] if isinstance(source, torch.nn.Module) else []
        for module, _ in modes:
            module.train(False)
        rows, order = [], []
        try:
            for raw in self.runtime.loader(self.stream):
                batch = stream.batch(raw)
                value = getattr(source(batch.inputs), what)
                if value is None:
                    raise KeyError(f"network {network!r} gives no {what!r} features (declare them in the method's "
                                   "needs)")
                rows.append(value.float().flatten(1))
                order.append(batch.index)
        finally:
            for module, training in modes:
                module.train(training)
        values, index = all_gather_cat(torch.cat(rows)), all_gather_cat(torch.cat(order))
        out = values.new_zeros(self.size, values.shape[1])
        out[index] = values  # shards may repeat a padding row: the same values land twice
        return out
