"""Multi-process training under torchrun: joining the process group, DDP wrapping, SyncBatchNorm (the
collectives themselves are in core/dist.py)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from kdzoo.core.dist import DistInfo, synced_buffer_names


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment; single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        # on GPUs NCCL for CUDA tensors and gloo for the few CPU ones (object and flag collectives)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo")
    info = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def wrap_ddp(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP around `module` (rank 0's parameters and buffers to every rank, gradients averaged, buffers broadcast
    from rank 0 at every forward), except for the `synced_buffer_names`: those get rank 0's values once, here
    (ranks are seeded apart), and are then left to the module."""
    if not info.enabled:
        return module
    synced = synced_buffer_names(module)
    for name in synced:
        dist.broadcast(module.get_buffer(name).data, src=0)
    if not any(p.requires_grad for p in module.parameters()):
        return module
    if info.sync_bn:  # in place: the same parameters and buffers, statistics over the global batch
        convert_sync_batchnorm(module)
    if synced:
        # The documented (if underscored) way to keep named parameters/buffers out of DDP's synchronisation.
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, synced)
    ids = [device.index] if device.type == "cuda" else None
    # Methods may leave some adapters unused in a step (e.g. an init stage), hence find_unused_parameters.
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def convert_sync_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm child of `module` (at any depth) by a SyncBatchNorm holding its parameters and
    buffers (torch's convert_sync_batchnorm, applied below the top so the module objects others hold stay)."""
    for name, child in list(module.named_children()):
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

