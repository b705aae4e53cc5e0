"""Collectives over torchrun's process group that hold no engine state: who this process is, gathers in rank
order, broadcasts of buffers. Every function is a no-op (or the identity) in a single process."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    sync_bn: bool = False  # engine.sync_bn: wrap_ddp turns BatchNorm into SyncBatchNorm (CUDA)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SYNCED_BUFFERS = "synced_buffers"  # attribute a module may set: names of its buffers it keeps equal on every rank


def synced_buffer_names(module: nn.Module) -> list[str]:
    """Fully qualified names (relative to `module`) of the buffers its submodules list in `synced_buffers`.

    A module lists there the buffers it keeps identical on every process by itself (e.g. memory banks updated
    from `all_gather_cat` of every rank's batch): DDP must not overwrite them with rank 0's copy at every forward.
    """
    names = []
    for prefix, sub in module.named_modules():
        for name in getattr(sub, SYNCED_BUFFERS, ()):
            full = f"{prefix}.{name}" if prefix else name
            module.get_buffer(full)  # raises on a name that is not a buffer
            names.append(full)
    return names


def world_size() -> int:
    """Processes in the default process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` concatenated along dim 0 in rank order (rank 0's rows first); `tensor` itself in a
    single process. A collective: every process must call it, with the same trailing shape and dtype; the
    dim-0 sizes may differ (a last partial batch): they are gathered first and the rows padded to the largest.
    No gradient flows back through the result; the result stays on the tensor's device (CUDA under NCCL)."""
    world = world_size()
    if world == 1:
        return tensor
    if tensor.dim() == 0:
        raise ValueError("all_gather_cat: needs a tensor with at least one dimension")
    tensor = tensor.detach().contiguous()
    rows = tensor.shape[0]
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([rows], dtype=torch.long, device=tensor.device))
    counts = [int(n) for n in torch.cat(sizes).tolist()]  # one host sync
    largest = max(counts)
    if largest == 0:
        return tensor
    if rows < largest:
        tensor = torch.cat([tensor, tensor.new_zeros((largest - rows, *tensor.shape[1:]))])
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_buffers(module: nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BN statistics drift apart per rank), so that all ranks evaluate
    exactly the network rank 0 saves."""
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def broadcast_unsynced_buffers(module: nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (BN statistics moved on each rank's own batches since DDP's last broadcast) to every rank,
    except the ones the module keeps equal itself (memory banks): at every checkpoint all ranks hold one state."""
    if not info.enabled:
        return
    skip = set(synced_buffer_names(module))
    for name, buffer in module.named_buffers():
        if name not in skip:
            dist.broadcast(buffer.data, src=0)


def gather_objects(obj, info: DistInfo) -> list:
    """`obj` of every rank, in rank order (a one-item list without DDP)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
