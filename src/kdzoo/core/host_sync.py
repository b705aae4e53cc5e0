"""Counting host synchronisations in a piece of training code.

On a GPU, reading a value back to the host (`.item()`, `if tensor:`, `.tolist()`, a boolean-mask index whose
result size depends on the data, `nonzero`) waits for every queued kernel: one in a training step stalls the
pipeline each step. `HostSyncs` counts them:
- on CUDA with `torch.cuda.set_sync_debug_mode("warn")`, which warns at every synchronising call;
- on every device with `HostReads`, a TorchFunctionMode that counts the tensor calls that synchronise on CUDA, so
  the CPU tests catch a `.item()` slipped into a step before any GPU sees it. Code that reads tensors which live on
  the host by construction (random draws of torch's CPU generator for a mixing box) says so with `host_side()`.
"""
from __future__ import annotations

import threading
import warnings
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

# Tensor calls that read device memory back to the host (on CUDA each waits for the queued kernels).
_READS = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero", "argwhere",
          "unique", "unique_consecutive", "masked_select", "cpu", "bincount", "histc", "allclose", "equal"}
_INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_"}


_HOST_SIDE = threading.local()


@contextmanager
def host_side() -> Iterator[None]:
    """Reads inside are of CPU tensors on every device (no GPU synchronisation): HostReads does not count them."""
    depth = getattr(_HOST_SIDE, "depth", 0)
    _HOST_SIDE.depth = depth + 1
    try:
        yield
    finally:
        _HOST_SIDE.depth = depth


def _name(func) -> str:
    return getattr(func, "__name__", "")


def _has_bool_index(args) -> bool:
    index = args[1] if len(args) > 1 else None
    parts = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


class HostReads(TorchFunctionMode):
    """Counts, by call name, the tensor calls made inside it that synchronise on CUDA."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = _name(func)
        if getattr(_HOST_SIDE, "depth", 0):  # declared host tensors
            return func(*args, **(kwargs or {}))
        if name in _READS or (name in _INDEXING and _has_bool_index(args)):
            self.counts[name if name not in _INDEXING else f"{name}[bool mask]"] += 1
        elif name in ("to", "cuda") and _to_host(args, kwargs or {}):
            self.counts["to(cpu)"] += 1
        elif name == "to" and _blocking_to_device(args, kwargs or {}):
            self.counts["to(device) blocking"] += 1
        elif name in ("tensor", "as_tensor") and (kwargs or {}).get("device") is not None:
            self.counts[f"{name}(device=)"] += 1
        return func(*args, **(kwargs or {}))


def _to_host(args, kwargs) -> bool:
    tensor = args[0] if args else None
    if not isinstance(tensor, torch.Tensor) or tensor.device.type == "cpu":
        return False
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"


def _blocking_to_device(args, kwargs) -> bool:
    """A host tensor sent to a device without non_blocking: on a GPU, a copy the host waits for. (On the CPU this
    is seen as any CPU tensor's .to(device) call, the code a GPU run sends to the GPU.)"""
    tensor = args[0] if args else None
    if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu" or kwargs.get("non_blocking"):
        return False
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(target, torch.device) or (isinstance(target, str) and not target.startswith("torch."))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor (a draw of torch's CPU generator) on `device` with no synchronisation: pinned (torch's caching
    host allocator keeps the block until the copy is done) and copied asynchronously."""
    if torch.device(device).type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)  # elsewhere a no-op copy (and what HostReads looks for)


class HostSyncs:
    """`with HostSyncs(device) as syncs: ...` then `syncs.total` and `syncs.counts` (call name -> count; on
    CUDA also "cuda sync" from the sync debug mode's warnings)."""

    def __init__(self, device: torch.device):
        self.device, self.counts = device, Counter()

    def __enter__(self) -> "HostSyncs":
        self._reads = HostReads()
        self._reads.__enter__()
        if self.device.type == "cuda":
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
            self._warnings.__exit__(*exc)
            synced = [w for w in self._caught if "synchroniz" in str(w.message)]
            if synced:
                self.counts["cuda sync"] += len(synced)
        self._reads.__exit__(*exc)
        self.counts.update(self._reads.counts)

    @property
    def total(self) -> int:
        """The synchronisations: CUDA's own count where there is one, else the host reads HostReads saw."""
        if self.device.type == "cuda":
            return self.counts["cuda sync"]
        return sum(self.counts.values())
