"""A run's checkpoints as one atomic unit: deployable weights (last, best) and the resume state together.

Every save writes a new generation of files under serial-numbered names (`c000007.last.safetensors`,
`c000007.state.pt`, ...), each through a temporary file and a rename, and then commits them all at once by
atomically replacing the pointer `checkpoint.json`. Until that rename the previous generation is the checkpoint,
untouched; after it, the new one is. Only then are the usual names (`last.safetensors`, `best.safetensors`,
`last.state.pt` and their `.json`) linked to the committed files, and files of older generations removed. A kill
at any point leaves either the old or the new checkpoint complete; `repair()` (run when a run folder is opened)
finishes an interrupted publication and removes stray temporary files.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError

from kdzoo.checkpoints.format import (
    CHECKPOINT_DIR,
    load_state,
    read_meta,
    save_state,
    save_weights,
)
from kdzoo.checkpoints.run_folder import remove_stray_temp_files
from kdzoo.core.atomic import atomic_path, atomic_write_text
from kdzoo.errors import CheckpointError

POINTER = "checkpoint.json"
LEGACY_STATE = "last.state.pt"  # folders written before the pointer existed: the state alone
PUBLISHED = {"last": "last.safetensors", "best": "best.safetensors", "state": LEGACY_STATE}


class DiskFullError(CheckpointError):
    """A checkpoint could not be written for lack of space; the previous checkpoint is intact."""


class CheckpointStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    # Reading ------------------------------------------------------------------------------------------------
    def pointer(self) -> Optional[dict[str, Any]]:
        path = self.folder / POINTER
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path} is unreadable; the run folder's checkpoint is damaged") from None
        if not isinstance(data, dict) or "serial" not in data:
            raise CheckpointError(f"{path} is not a kdzoo checkpoint pointer")
        return data

    def state_path(self) -> Optional[Path]:
        """The committed resume state, or None when the folder holds no complete checkpoint."""
        pointer = self.pointer()
        if pointer is not None and pointer.get("state") and (self.folder / pointer["state"]).is_file():
            return self.folder / pointer["state"]
        published = self.folder / LEGACY_STATE  # the usual name: also all that folders from before the pointer have
        return published if published.is_file() else None

    def has_checkpoint(self) -> bool:
        return self.state_path() is not None

    def weights_path(self, which: str) -> Optional[Path]:
        pointer = self.pointer()
        if pointer is not None and pointer.get(which):
            return self.folder / pointer[which]
        published = self.folder / PUBLISHED.get(which, f"{which}.safetensors")
        return published if published.is_file() else None

    def readable_weights(self, which: str) -> Optional[Path]:
        """The file to read `which` from: its usual name when that is the committed file (replaced by renames,
        never removed, so a reader during training cannot lose it), else the committed generation file."""
        committed = self.weights_path(which)
        published = self.folder / PUBLISHED.get(which, f"{which}.safetensors")
        if published.is_file() and (committed is None or not committed.is_file()
                                    or os.path.samefile(committed, published)):
            return published
        return committed if committed is not None and committed.is_file() else None

    def load_state(self) -> dict[str, Any]:
        path = self.state_path()
        if path is None:
            raise CheckpointError(f"no complete checkpoint in {self.folder}")
        return load_state(path)

    # Writing ------------------------------------------------------------------------------------------------
    def save(self, weights: dict[str, torch.Tensor], meta: dict[str, Any], state: dict[str, Any],
             improved: bool, extra: Optional[dict[str, tuple[dict, dict]]] = None) -> None:
        """Write a new generation (last, best when `improved`, resume state) and commit it atomically.
        `extra` holds further artifacts, {name: (weights, meta)}, published as `<name>.last/best.safetensors`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        previous = self.pointer()
        serial = (previous["serial"] if previous else 0) + 1
        stem = f"c{serial:06d}"
        new = {"serial": serial, "epoch": meta.get("epoch"), "phase": meta.get("phase"),
               "last": f"{stem}.last.safetensors", "state": f"{stem}.state.pt",
               "best": f"{stem}.best.safetensors" if improved else (previous or {}).get("best")}
        for name in extra or {}:
            for which in ("last", "best"):
                new[f"{name}.{which}"] = (f"{stem}.{name}.{which}.safetensors" if which == "last" or improved
                                          else (previous or {}).get(f"{name}.{which}"))
        try:
            files = [("", weights, meta)] + [(f"{name}.", w, m) for name, (w, m) in (extra or {}).items()]
            for prefix, tensors, metadata in files:
                save_weights(self.folder / new[f"{prefix}last"], tensors, metadata)
                if improved:  # the same tensors and metadata: a second name for the same file
                    for suffix in (".safetensors", ".json"):
                        _replace_with_link(self.folder / Path(new[f"{prefix}last"]).with_suffix(suffix),
                                           self.folder / Path(new[f"{prefix}best"]).with_suffix(suffix))
            save_state(self.folder / new["state"], state)
            atomic_write_text(self.folder / POINTER, json.dumps(new, indent=2) + "\n")  # the commit
        except (OSError, RuntimeError, SafetensorError) as err:  # torch and safetensors report failed writes so
            self._remove_generation(stem)
            if isinstance(err, RuntimeError) and not _is_write_failure(err):
                raise
            raise self._write_error(err, weights, state) from None
        try:
            self._publish(new)
        except OSError as err:  # committed: the checkpoint is safe; the usual names follow at the next open
            raise CheckpointError(f"checkpoint of epoch {new['epoch']} is saved in {self.folder}, but linking its "
                                  f"usual names failed ({err.strerror or err}); the run resumes from it") from None

    def repair(self) -> None:
        """Finish a publication a kill interrupted; remove temporary files and uncommitted generations."""
        if not self.folder.is_dir():
            return
        remove_stray_temp_files(self.folder)
        pointer = self.pointer()
        if pointer is not None:
            self._publish(pointer)
        else:
            for path in self.folder.glob("c[0-9]*.*"):
                path.unlink(missing_ok=True)

    # Internals ----------------------------------------------------------------------------------------------
    def _publish(self, pointer: dict[str, Any]) -> None:
        published = {**PUBLISHED, **{key: f"{key}.safetensors" for key in pointer
                                     if key.endswith((".last", ".best"))}}
        for which, name in published.items():
            source = pointer.get(which)
            if source:
                _replace_with_link(self.folder / source, self.folder / name)
                if name.endswith(".safetensors"):
                    _replace_with_link(self.folder / Path(source).with_suffix(".json"),
                                       (self.folder / name).with_suffix(".json"))
        weights = [k for k in published if k != "state"]
        keep = {pointer.get(k) for k in published} | {str(Path(pointer[k]).with_suffix(".json"))
                                                       for k in weights if pointer.get(k)}
        for path in self.folder.glob("c[0-9]*.*"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def _remove_generation(self, stem: str) -> None:
        for path in self.folder.glob(f"{stem}.*"):
            path.unlink(missing_ok=True)

    def _write_error(self, err: Exception, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> Exception:
        need_mb = (2 * _tensor_bytes(weights) + _tensor_bytes(state)) / 2**20
        try:
            free_mb = shutil.disk_usage(self.folder).free / 2**20
        except OSError:
            free_mb = float("nan")
        code = getattr(err, "errno", None)
        no_space = code in (errno.ENOSPC, errno.EDQUOT) or "no space" in str(err).lower() or (
            code is None and free_mb < need_mb)  # torch's write failures carry no errno
        if no_space:
            return DiskFullError(
                f"cannot write a checkpoint in {self.folder}: not enough disk space ({free_mb:.0f} MB free, about "
                f"{need_mb:.0f} MB needed); the previous checkpoint is intact: free space, then continue with "
                f"--resume {self.folder.parent}")
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
        return CheckpointError(f"cannot write a checkpoint in {self.folder}: {reason}; the previous checkpoint "
                               "is intact")


def _is_write_failure(err: RuntimeError) -> bool:
    """torch.save's report of a failed write (e.g. `[enforce fail at inline_container.cc] ... file write failed`)."""
    text = str(err)
    return "enforce fail" in text or "write" in text.lower()


def _replace_with_link(source: Path, target: Path) -> None:
    """Make `target` the same file as `source` in one rename (a hard link, or a copy where links fail)."""
    if not source.is_file():
        return
    if target.is_file() and os.path.samefile(source, target):
        return
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def resolve_checkpoint(path: str | Path, which: str = "best", network: Optional[str] = None) -> Path:
    """A run folder -> the `which` (best, else last) checkpoint of the network it deploys, or of another network it
    saved (`network`, e.g. teacher, target); a file -> itself. One-line errors. A run whose classifier never
    trained (self-supervised, marked so in its metadata) picked its best by a kNN monitor on test labels: what
    `best` gives for it is its last."""
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        return path
    store = CheckpointStore(path / CHECKPOINT_DIR)
    last = store.readable_weights("last")
    if which == "best" and last is not None and read_meta(last).get("self_supervised"):
        which = "last"
    if network not in (None, "student"):
        file = path / CHECKPOINT_DIR / f"{network}.{which}.safetensors"
        if not file.is_file():
            saved = sorted({p.name.split(".")[0] for p in (path / CHECKPOINT_DIR).glob("*.last.safetensors")
                            if not re.fullmatch(r"c\d+", p.name.split(".")[0])} - {"last"})
            raise CheckpointError(f"run folder {path} saved no {network} network (it has: "
                                  f"{', '.join(['student', *saved])})")
        return file
    for name in (which, "last") if which == "best" else (which,):
        candidate = store.readable_weights(name)
        if candidate is not None:
            return candidate
    raise CheckpointError(f"no checkpoint in run folder {path} (expected {CHECKPOINT_DIR}/{which}.safetensors)")
