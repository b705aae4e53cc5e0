"""Checkpoints: safetensors weights with JSON metadata (deployable), and a resume state (weights_only).

A run folder holds `checkpoints/{best,last}.safetensors` (+ a `.json` copy of the metadata) and
`checkpoints/last.state.pt`, the full training state for `--resume`. Nothing here ever unpickles: weights load
with safetensors, the resume state with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from kdzoo.core.atomic import atomic_path, atomic_write_text
from kdzoo.errors import CheckpointError

META_KEY = "kdzoo"
CHECKSUM_KEY = "kdzoo_sha256"  # of the tensors, so that corrupted bytes under an intact header are caught
CHECKPOINT_DIR = "checkpoints"


def tensors_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_weights(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write `state` and `meta` to a .safetensors file atomically, plus a readable .json beside it."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    text = json.dumps(meta, sort_keys=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: text, CHECKSUM_KEY: tensors_checksum(tensors)})
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a kdzoo checkpoint, read from the safetensors header alone."""
    path = Path(path)
    return _kdzoo_meta(path, _checked_header(path))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata, from one read of the file (a checkpoint replaced meanwhile cannot mix two
    versions); the tensors' checksum is verified when the file has one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    header = _checked_header(path, data)
    meta = _kdzoo_meta(path, header)
    try:
        state = load_bytes(data)
    except (SafetensorError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt or truncated ({str(err).splitlines()[0]})") from None
    expected = (header.get("__metadata__") or {}).get(CHECKSUM_KEY)
    if expected is not None and tensors_checksum(state) != expected:
        raise CheckpointError(f"{path} is corrupt: its tensors do not match the checksum stored with them")
    return state, meta


def _kdzoo_meta(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    meta = (header.get("__metadata__") or {}).get(META_KEY)
    if meta is None:
        raise CheckpointError(f"{path} is a safetensors file without kdzoo metadata; "
                              "convert it with `kdzoo import-checkpoint`")
    return json.loads(meta)


def _checked_header(path: Path, data: Optional[bytes] = None) -> dict[str, Any]:
    """The header of a complete safetensors file (from `data`, else read from `path`); anything else is refused
    without unpickling it."""
    if data is None:
        try:
            size = path.stat().st_size
            with open(path, "rb") as handle:
                head = handle.read(8)
                header_bytes = handle.read(_header_length(path, head, size))
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint not found: {path}") from None
    else:
        size, head = len(data), data[:8]
        header_bytes = data[8:8 + _header_length(path, head, size)]
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is corrupt or truncated (unreadable safetensors header)") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if 8 + len(header_bytes) + max(ends, default=0) > size:
        raise CheckpointError(f"{path} is corrupt or truncated (data ends early)")
    return header


def _header_length(path: Path, head: bytes, size: int) -> int:
    header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else None
    if header_len is None or header_len > size - 8 or header_len > 100_000_000:
        # Only a file that is no safetensors file is named a pickle: a safetensors header length may begin with
        # the bytes of a pickle's magic (0x80 is the low byte of 1 in 256 header lengths).
        protocol = head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
        if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and protocol):
            raise CheckpointError(f"{path} is a pickled PyTorch checkpoint, which kdzoo never unpickles; "
                                  "convert it with `kdzoo import-checkpoint`")
        raise CheckpointError(f"{path} is corrupt or truncated (not a safetensors file)")
    return header_len


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """The resume state: tensors and plain Python values only, so it loads with weights_only=True."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no resume state at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the file is unusable
        raise CheckpointError(f"cannot resume from {path}: {unsafe_load_reason(err)}") from None


def unsafe_load_reason(err: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, in one line and without torch's advice to load it
    unsafely (kdzoo never unpickles code)."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a Python object ({found.group(1)}), not only tensors, and kdzoo never unpickles code"
    if "weights_only" in text or "Weights only load failed" in text:
        return "it holds Python objects, not only tensors, and kdzoo never unpickles code"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first[:300]


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that reports missing/unexpected keys and shape mismatches in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensors of another shape (e.g. {k}: {tuple(state[k].shape)} "
                         f"vs {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)
