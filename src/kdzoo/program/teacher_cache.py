"""Cached teacher outputs (`teacher.cache: true`; CKD's few-sample setting): the teacher runs once per training
image, on one random training augmentation, and its logits (and pooled features when a method reads them) are
stored in the run folder (or `teacher.cache_dir`). The file is keyed by the teacher checkpoint's hash, the
training images and the seed: a resumed or repeated run reuses it, a changed teacher or subset recomputes it
(saying so in one line). During training the teacher is never called: its slot reads the cache by dataset index.
The file carries a SHA-256 of its tensors: a truncated, altered or unchecksummed file is recomputed (one log line).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from kdzoo.checkpoints.format import CHECKSUM_KEY, tensors_checksum
from kdzoo.checkpoints.store import resolve_checkpoint
from kdzoo.core.atomic import atomic_path
from kdzoo.core.batch import Batch
from kdzoo.data.wrappers import source_indices
from kdzoo.errors import ConfigError, KdzooError
from kdzoo.models.features import Features, Needs

CACHE_FILE = "teacher_cache.safetensors"
CACHEABLE = ("logits", "pooled")


class DamagedStore(KdzooError):
    """A stored file of teacher outputs that cannot be trusted; the message names it and why."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path} is damaged ({why})")
        self.path = path


def write_checked(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Atomically, with the tensors' SHA-256 in the header (read_checked verifies it)."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={**metadata, CHECKSUM_KEY: tensors_checksum(tensors)})


def read_checked(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a file from write_checked; DamagedStore if missing, unreadable or altered."""
    if not path.is_file():
        raise DamagedStore(path, "missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, SafetensorError) as err:  # truncated or a broken header
        raise DamagedStore(path, f"unreadable: {(str(err).splitlines() or [type(err).__name__])[0]}") from None
    if CHECKSUM_KEY not in metadata:
        raise DamagedStore(path, "no checksum")
    if tensors_checksum(tensors) != metadata[CHECKSUM_KEY]:
        raise DamagedStore(path, "its tensors do not match their checksum")
    return tensors, metadata


class CachedTeacher:
    """A step source that looks a batch's rows up by dataset index instead of running the teacher."""

    reads_batch = True

    def __init__(self, outputs: dict[str, Tensor], device: torch.device):
        self.outputs = {k: v.to(device) for k, v in outputs.items()}

    def from_batch(self, batch: Batch, view: str) -> Features:
        try:
            index = batch.index_of(view)
        except KeyError as err:
            raise KeyError(f"the cached teacher has no outputs for view {view!r}: {err.args[0]}") from None
        return Features(**{k: v[index] for k, v in self.outputs.items()})


def refuse_uncacheable(methods, teacher: str = "teacher") -> None:
    """One line for the first method that needs teacher outputs the cache does not hold."""
    for name, m in methods.items():
        if m.binding.teacher != teacher or not m.needs_teacher():
            continue
        asked = [f for f, on in vars(m.teacher_needs).items() if on and f not in CACHEABLE]
        if asked or m.requires.live_teacher:
            what = f"the teacher's {asked[0]} features" if asked else "a live teacher"
            raise ConfigError(f"teacher.cache: method {name} needs {what}, which cached teacher outputs do not "
                              f"hold (the cache keeps {' and '.join(CACHEABLE)}); set teacher.cache: false")


def cache_key(checkpoint: str, images: Dataset, seed: int, needs: Needs, dataset: str,
              pipeline: str = "") -> dict[str, str]:
    """What the cached outputs depend on: the teacher's weights, which images, the seed of their one
    augmentation, the outputs kept and the training pipeline (augmentation, size)."""
    file = resolve_checkpoint(checkpoint, "best")
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    indices = source_indices(images)
    identity = f"{dataset}:{len(images)}:" + (",".join(map(str, indices.tolist())) if indices is not None else "all")
    return {"teacher": digest.hexdigest(), "images": hashlib.sha256(identity.encode()).hexdigest(),
            "seed": str(seed), "outputs": ",".join(f for f in CACHEABLE if getattr(needs, f)), "pipeline": pipeline}


def teacher_cache(teacher: Callable[[Tensor], Features], images: Dataset, key: dict[str, str],
                  folder: Optional[Path], seed: int, batch_size: int, device: torch.device, log=print,
                  is_main: bool = True, sync: Callable[[], None] = lambda: None, progress: bool = True,
                  shared: bool = False) -> dict[str, Tensor]:
    """The cached outputs for `images` (computed now unless a cache with this key exists). In the run folder
    the cache is one file that a changed key replaces; in a `shared` folder (teacher.cache_dir) each key has its
    own file. The main process decides and writes; every process then reads the same file."""
    fields = key["outputs"].split(",")
    if folder is None:  # a program built outside a run: nothing to keep
        return compute_outputs(teacher, images, fields, seed, batch_size, device, progress)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(folder) / (f"teacher_cache-{digest}.safetensors" if shared else CACHE_FILE)
    if is_main:
        try:
            found = read_cache(path)
        except DamagedStore as err:
            log(f"teacher cache: {err}; recomputing it")
            found = None
        if found is not None and found[1] == key:
            log(f"teacher cache: reusing {path} ({len(next(iter(found[0].values())))} images)")
        else:
            if found is not None:
                changed = [k for k in key if found[1].get(k) != key[k]]
                log(f"teacher cache: the {' and the '.join(changed)} changed since {path} was written; "
                    "recomputing it")
            log(f"teacher cache: the teacher runs once over the {len(images)} training images -> {path}")
            outputs = compute_outputs(teacher, images, fields, seed, batch_size, device, progress)
            write_checked(path, outputs, {"key": json.dumps(key)})
    sync()
    try:
        found = read_cache(path)
    except DamagedStore as err:
        raise ConfigError(f"teacher.cache: {err} on this process; every process of a run must see the same run "
                          "folder (or teacher.cache_dir)") from None
    if found is None or found[1] != key:
        raise ConfigError(f"teacher.cache: {path} is missing or holds another cache on this process; every "
                          "process of a run must see the same run folder (or teacher.cache_dir)")
    return found[0]


def read_cache(path: Path) -> Optional[tuple[dict[str, Tensor], dict[str, str]]]:
    """The outputs and their key; None if there is no file, DamagedStore if it cannot be trusted."""
    if not path.is_file():
        return None
    outputs, metadata = read_checked(path)
    try:
        key = json.loads(metadata.get("key", ""))
    except ValueError:
        key = None
    if not isinstance(key, dict):
        raise DamagedStore(path, "no readable key")
    return outputs, key


@torch.no_grad()
def compute_outputs(teacher: Callable[[Tensor], Features], images: Dataset, fields: list[str], seed: int,
                    batch_size: int, device: torch.device, progress: bool = True) -> dict[str, Tensor]:
    """One pass over `images` in index order; the augmentations come from `seed` (the run's RNG is untouched)."""
    chunks: dict[str, list[Tensor]] = {f: [] for f in fields if f}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loader = DataLoader(images, batch_size=batch_size, shuffle=False)
        for raw in tqdm(loader, desc="teacher cache", leave=False, dynamic_ncols=True, disable=not progress):
            x = raw[0]
            x = next(iter(x.values())) if isinstance(x, dict) else x
            feats = teacher(x.to(device))
            for f in chunks:
                chunks[f].append(getattr(feats, f).float().cpu())
    return {f: torch.cat(v) for f, v in chunks.items()}
