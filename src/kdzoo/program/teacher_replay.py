"""`teacher.cache: replay` (FKD-style): the first run records, per epoch, every training image's augmentation
parameters (data/replay.py) and the teacher's top-k soft labels on that augmented image; later runs (other
students, seeds, methods that read only the teacher's logits) replay exactly those images with the stored labels
and never call the teacher.

Storage, in `teacher.cache_dir` (default: the run folder): replay.json (the key and what is done) and per epoch
params-<e>.safetensors (the augmentation rows) and soft-<e>.safetensors (top-k probabilities at the recording
temperature, fp16, and their class indices, int16/int32). Per image and epoch that is 4k bytes + 4 bytes per
parameter, on disk and, for the epoch being replayed, in memory (rows are expanded per batch). The key: the
teacher checkpoint's SHA-256, the training images, the pipeline, k and the temperature; a cache_dir holding
another key is refused in one line (another teacher or pipeline), never overwritten.

Integrity: each file carries a SHA-256 of its tensors and the replay and epoch it belongs to; class indices are
range-checked on read. A damaged epoch (truncated, altered, missing or foreign file) is recorded anew by a run
with the teacher (one log line naming the file) and refused in one line without one; a damaged replay.json is
refused in one line (it holds the key, which nothing else can vouch for).

Replayed soft labels: the top-k probabilities, the rest of the mass spread evenly over the other classes (FKD),
given to methods as logits T * log p (softmax at T gives back p exactly; with k = classes, at any T). The
recording run trains on the same reconstruction, so every run of a cache sees the same teacher signal.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor

from kdzoo.core.batch import Batch
from kdzoo.core.dist import all_gather_cat
from kdzoo.errors import ConfigError
from kdzoo.models.features import Features, Needs
from kdzoo.program.replay_store import ReplayCache
from kdzoo.program.teacher_cache import DamagedStore


def soft_labels(values: Tensor, classes: Tensor, num_classes: int) -> Tensor:
    """(n, C) probabilities: the stored top-k, the remaining mass spread evenly over the other classes."""
    values = values.float()
    rest = (1 - values.sum(1, keepdim=True)).clamp_min(0)
    k = values.shape[1]
    out = (rest / max(num_classes - k, 1)).expand(len(values), num_classes).clone() if num_classes > k else \
        torch.zeros(len(values), num_classes, device=values.device)
    return out.scatter_(1, classes.long(), values)


class ReplayTeacher:
    """The teacher's step source under `teacher.cache: replay`: per epoch it replays a complete recording (the
    teacher is not called) or records one (live teacher; top-k of softmax(logits / T), gathered over processes,
    written once every training image of the epoch has been seen)."""

    reads_batch = True

    def __init__(self, cache: ReplayCache, live, n: int, num_classes: int, topk: int, temperature: float,
                 device: torch.device, log=print):
        self.cache, self.live, self.n, self.classes, self.log = cache, live, n, num_classes, log
        self.k, self.T, self.device = min(topk, num_classes), temperature, device
        self.calls = 0  # teacher forwards (what a replayed epoch must keep at zero)
        self.mode, self.epoch = "replay", -1

    def start_epoch(self, epoch: int) -> str:
        """Replay `epoch` where every process finds its recording intact, else record it (all processes alike:
        the recording's collectives need every one)."""
        self.epoch = epoch
        stored, damage = None, None
        if self.cache.complete(epoch):
            try:
                stored = self.cache.recording(epoch, self.n, self.k, self.classes)
            except DamagedStore as err:
                damage = err
        if bool(all_gather_cat(torch.tensor([int(stored is not None)], device=self.device)).all()):
            values, classes = stored  # k per image on the device; rows are expanded per batch
            self.stored = (values.to(self.device), classes.to(self.device))
            self.mode = "replay"
        else:
            if self.live is None:
                raise ConfigError(f"teacher.cache: {damage}; a run with the teacher records epoch {epoch + 1} anew"
                                  if damage else f"teacher.cache: replay has no recording of epoch {epoch + 1} and "
                                  "no teacher to record it with")
            if damage is not None:
                self.log(f"teacher.cache: {damage}; recording epoch {epoch + 1} anew with the teacher")
            index_dtype = torch.int16 if self.classes <= 32767 else torch.int32
            self.values = torch.zeros(self.n, self.k, dtype=torch.float16, device=self.device)
            self.indices = torch.zeros(self.n, self.k, dtype=index_dtype, device=self.device)
            self.seen = torch.zeros(self.n, dtype=torch.bool, device=self.device)
            self.filled = 0  # rows gathered so far, counted on the host: `seen` is read only once they could cover n
            self.mode = "record"
        return self.mode

    def from_batch(self, batch: Batch, view: str) -> Features:
        index = batch.index_of(view)
        if self.mode == "replay":
            values, classes = self.stored
            return self.as_features(values[index], classes[index])
        self.calls += 1
        features = self.live(batch.view(view))
        top = torch.softmax(features.logits.float() / self.T, dim=1).topk(self.k, dim=1)
        if self.mode == "record":  # gathered as float32 / int64 (gloo has no fp16 or int16 all_gather)
            rows = all_gather_cat(index)
            self.values[rows] = all_gather_cat(top.values).to(torch.float16)
            self.indices[rows] = all_gather_cat(top.indices).to(self.indices.dtype)
            self.seen[rows] = True
            self.filled += rows.shape[0]
            if self.filled >= self.n and bool(self.seen.all()):  # no per-step read of the device
                self.cache.write_soft(self.epoch, self.values.cpu(), self.indices.cpu())
                self.mode = "done"  # the rest of the epoch (a padded shard repeats images) records nothing
        return self.as_features(top.values.half(), top.indices)  # what a replay gives: the recording trains on it

    def as_features(self, values: Tensor, classes: Tensor) -> Features:
        return Features(logits=self.T * soft_labels(values, classes, self.classes).clamp_min(1e-8).log())

    def __call__(self, x: Tensor) -> Features:  # a shape probe or a pass without a batch: the live teacher
        if self.live is None:
            raise ConfigError("teacher.cache: replay holds soft labels per image and epoch, not a teacher to run")
        return self.live(x)


class EpochTable:
    """An epoch's augmentation rows for the dataset (in any process or DataLoader worker): the recorded ones, or,
    before rank 0 has written them, the same deterministic draw."""

    def __init__(self, cache: ReplayCache, augment, n: int, seed: int):
        self.cache, self.augment, self.n, self.seed = cache, augment, n, seed

    def draw(self, epoch: int) -> Tensor:
        return self.augment.sample(self.n, torch.Generator().manual_seed(self.seed + epoch))

    def __call__(self, epoch: int) -> Tensor:
        found = self.cache.params(epoch)
        if found is None:
            found = self.draw(epoch)
            self.cache.remember(epoch, found)
        return found


def replay_temperature(methods) -> float:
    """The temperature the soft labels are stored at: the logit methods' (T or tau), which must agree."""
    temps = {float(getattr(m.params, a)) for m in methods.values() if m.needs_teacher()
             for a in ("T", "tau") if hasattr(m.params, a)}
    if len(temps) > 1:
        raise ConfigError(f"teacher.cache: replay stores soft labels at one temperature; the methods use "
                          f"{', '.join(map(str, sorted(temps)))}")
    return temps.pop() if temps else 1.0


def refuse_unreplayable(methods, views) -> None:
    for name, m in methods.items():
        if m.needs_teacher() and (any(v for f, v in vars(m.teacher_needs).items() if f != "logits")
                                  or m.requires.live_teacher):
            raise ConfigError(f"teacher.cache: replay holds the teacher's soft labels; method {name} needs more of "
                              "the teacher (features or a live network); use teacher.cache: false")
    if tuple(views) != ("x",):
        raise ConfigError("dataset.views: teacher.cache: replay records one augmented view per image and epoch")


def replay_program_parts(cfg, streams, methods, teacher, info, device, out, is_main: bool, log=print):
    """Put the replay in place: the training stream's images become replayed ones; returns the teacher's step
    source and the epoch hook (params of the epoch drawn or read, the clock set, replay or record)."""

    from kdzoo.data.registry import _builder, build_dataset
    from kdzoo.data.replay import EpochClock, ReplayAugment, ReplayDataset
    from kdzoo.data.views import IDENTITY
    from kdzoo.data.wrappers import IndexedDataset, source_indices, subset
    from kdzoo.program.teacher_cache import cache_key

    d, stream = cfg.dataset, streams["train"]
    refuse_unreplayable(methods, stream.views)
    if stream.on_device:
        raise ConfigError("teacher.cache: replay replays each image's recorded augmentation through the PyTorch "
                          "loader; use dataset.loader: torch")
    if stream.drop_last:
        raise ConfigError("teacher.cache: replay records every image of an epoch; with dataset.drop_last (or a "
                          "method that needs full batches) some are never seen: use teacher.cache: false")
    if stream.transform is not None or stream.sampler_fn is not None:
        raise ConfigError("teacher.cache: replay records one image per dataset index; batch transforms (rotate4) "
                          "and grouped batches change that: use teacher.cache: false")
    augment = ReplayAugment(_builder(d.name).transform("train", info, d.augment))
    inner = stream.dataset.dataset if isinstance(stream.dataset, IndexedDataset) else stream.dataset
    positions = source_indices(inner)
    temperature, k = replay_temperature(methods), min(cfg.teacher.replay_topk, info.num_classes)
    base = cache_key(cfg.teacher.checkpoint, inner, 0, Needs(logits=True), d.name)
    key = {"teacher": base["teacher"], "images": base["images"],
           "pipeline": f"{d.name}@{info.image_size} {Path(d.root).resolve() if d.root else '-'}: "
                       f"{augment.describe()}", "topk": str(k), "T": str(temperature)}
    cache = ReplayCache(Path(cfg.teacher.cache_dir or out), key, is_main)
    clock = EpochClock()
    raw = build_dataset(d.name, "train", transform=IDENTITY, root=d.root, download=d.download,
                        image_size=d.image_size)
    seed = int(hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8], 16)
    n = len(positions) if positions is not None else len(raw)
    table = EpochTable(cache, augment, n, seed)
    images = subset(raw, positions) if positions is not None else raw
    stream.dataset = IndexedDataset(ReplayDataset(images, augment, table, clock))
    source = ReplayTeacher(cache, teacher, n, info.num_classes, k, temperature, device,
                           log if is_main else (lambda line: None))

    def on_epoch_start(epoch: int) -> dict[str, float]:
        mode = source.start_epoch(epoch)  # replay: the epoch's stored rows and labels, checked and held
        if mode == "record":  # its draws (every process and worker draws the same), written anew
            cache.write_params(epoch, table.draw(epoch))
        clock.set(epoch)
        if epoch == 0 and is_main:
            log(f"teacher.cache: replay {'replays' if mode == 'replay' else 'records'} {cache.folder} "
                f"(top-{k} at T {temperature}, {cache.size_mb():.1f} MB so far)")
        return {"teacher_replayed": 1.0 if mode == "replay" else 0.0, "replay_cache_mb": round(cache.size_mb(), 2)}

    return source, on_epoch_start
