"""`dataset.loader: dali`: NVIDIA DALI's file reader and GPU ("mixed") JPEG decoding for image-folder datasets
(imagenet, imagefolder), the standard ImageNet pipeline on the GPU: train = random-area crop (0.08-1, aspect
3/4-4/3) fused into the decode, resize to the input size, flip p 0.5; test = resize the shorter side to size /
0.875, centre crop; both normalised with the dataset's mean/std, CHW float. Each process reads its shard
(shard_id = rank), reshuffled every epoch; the file list and labels are torchvision's (the same class indices as
the PyTorch loader).

What DALI cannot give is refused in one line (exit 2) on every machine, whether DALI is there or not: datasets
held in memory, TinyImageNet's pad-crop pipeline, `augment: false`, named views, subsets and held-out splits,
and methods that need dataset indices (CRD's bank). Training drops each shard's partial batch and runs the
smallest shard's number of steps on every process.
Where the recipe fits but DALI is not installed or there is no GPU, the run says why in one line and uses the
PyTorch loader (the default).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from kdzoo.data.stream import DataStream
from kdzoo.errors import ConfigError

FILE_DATASETS = ("imagenet", "imagefolder")
CENTER_CROP_RATIO = 0.875


def check_dali_recipe(d, needs_index: bool) -> None:
    """The recipe parts DALI's pipeline cannot serve: ConfigError naming the key."""
    if not d.augment:
        raise ConfigError("dataset.augment: false is not with loader: dali (its training pipeline always crops and "
                          "flips); use loader: torch")
    if d.name not in FILE_DATASETS:
        raise ConfigError(f"dataset.loader: dali reads image files ({', '.join(FILE_DATASETS)}); {d.name} is read "
                          "by the PyTorch loader (loader: torch)")
    unsupported = {"views": d.views, "subset.size": d.subset.size, "subset.val": d.subset.val}
    for key, value in unsupported.items():
        if value is not None:
            raise ConfigError(f"dataset.{key}: not with loader: dali (its pipeline is the standard ImageNet one over "
                              "the whole folder); use loader: torch")
    if needs_index:
        raise ConfigError("dataset.loader: dali yields no dataset indices, which a method of this recipe needs "
                          "(CRD/RRD banks); use loader: torch")


def dali_unavailable(device: torch.device) -> Optional[str]:
    """Why DALI cannot run here, or None."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return "nvidia.dali is not installed (pip install nvidia-dali-cuda120)"
    if device.type != "cuda":
        return f"it decodes on a GPU and this run is on {device.type}"
    return None


@dataclass
class DaliStream(DataStream):
    """A stream whose loader is a DALI pipeline over the files of `dataset` (a torchvision ImageFolder)."""

    image_size: int = 224
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    threads: int = 4
    _dali: Any = field(default=None, init=False, repr=False)

    def loader(self, dist):
        if self._dali is None:
            self._dali = DaliLoader(self, dist)
        return self._dali


class DaliLoader:
    """Iterates (images, labels) on the GPU for one process's shard; len() is its batches per epoch."""

    def __init__(self, stream: DaliStream, dist):
        from nvidia.dali.plugin.pytorch import (
            DALIClassificationIterator,
            LastBatchPolicy,
        )

        self.stream, samples = stream, stream.dataset.samples
        shards, shard = max(dist.world_size, 1), dist.rank
        pipe = imagenet_pipeline(files=[path for path, _ in samples], labels=[label for _, label in samples],
                                 train=stream.train, size=stream.image_size, mean=stream.mean, std=stream.std,
                                 shard_id=shard, num_shards=shards, batch_size=stream.batch_size,
                                 num_threads=stream.threads, device_id=stream.device.index or 0,
                                 seed=stream.seed + shard)
        pipe.build()
        # Training drops each shard's partial batch and stops at the smallest shard's count, so every process runs
        # the same number of steps (DDP would hang on an extra one); evaluation pads the last batch and strips
        # the padding, every image counted once.
        policy = LastBatchPolicy.DROP if stream.train else LastBatchPolicy.PARTIAL
        self.iterator = DALIClassificationIterator(pipe, reader_name="reader", last_batch_policy=policy,
                                                   last_batch_padded=not stream.train, auto_reset=True)
        smallest, largest = len(samples) // shards, math.ceil(len(samples) / shards)
        self.steps = smallest // stream.batch_size if stream.train else math.ceil(largest / stream.batch_size)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for step, out in enumerate(self.iterator):
            if step >= self.steps:  # a larger shard's extra batch: the iterator resets for the next epoch
                self.iterator.reset()
                break
            yield out[0]["data"], out[0]["label"].squeeze(-1).long()


def imagenet_pipeline(*, files, labels, train: bool, size: int, mean, std, shard_id: int, num_shards: int,
                      batch_size: int, num_threads: int, device_id: int, seed: int):
    """The DALI pipeline (nvidia.dali.pipeline_def, fn.readers.file, fn.decoders.*, fn.crop_mirror_normalize)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    def pipeline():
        jpegs, label = fn.readers.file(files=files, labels=labels, random_shuffle=train, shard_id=shard_id,
                                       num_shards=num_shards, pad_last_batch=True, name="reader")
        if train:
            images = fn.decoders.image_random_crop(jpegs, device="mixed", output_type=types.RGB,
                                                   random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3])
            images = fn.resize(images, resize_x=size, resize_y=size)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB)
            images = fn.resize(images, resize_shorter=int(size / CENTER_CROP_RATIO))
            mirror = False
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=(size, size),
                                          mean=[255 * m for m in mean], std=[255 * s for s in std], mirror=mirror)
        return images, label.gpu()

    return pipeline()


def dali_streams(streams: dict, d, info, device: torch.device, needs_index: bool, log=print) -> dict:
    """`streams` with train and test read by DALI where the recipe asks for it and DALI can run."""
    check_dali_recipe(d, needs_index)
    if info.name != "imagenet" and info.name != "imagefolder":  # TinyImageNet's layout: a pad-crop pipeline
        raise ConfigError(f"dataset.loader: dali runs the ImageNet pipeline; {info.name} trains with pad-crop "
                          "(use loader: torch)")
    why = dali_unavailable(device)
    if why is not None:
        log(f"dataset.loader: dali is unavailable ({why}); using the PyTorch loader")
        return streams
    out = dict(streams)
    for name in ("train", "test"):
        s = streams[name]
        out[name] = DaliStream(dataset=s.dataset, batch_size=s.batch_size, train=s.train, drop_last=s.drop_last,
                               seed=s.seed, device=device, channels_last=s.channels_last, views=s.views,
                               image_size=info.image_size, mean=info.mean, std=info.std,
                               threads=max(d.num_workers, 1))
    return out
