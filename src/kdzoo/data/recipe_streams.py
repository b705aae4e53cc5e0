"""The data streams a recipe's `dataset:` section describes: `train` (a stratified subset if asked, each view
through its pipeline), `test`, and `val` when `dataset.subset.val` holds part of the training set out
(stratified, evaluation pipeline; with `few_sample`, part of CKD's few-sample draw). Regimes build their streams
here; the engine builds none."""
from __future__ import annotations

import torch

from kdzoo.config.schema import DatasetConfig
from kdzoo.config.subset_keys import FEW_SAMPLE_VAL
from kdzoo.data.info import DatasetInfo
from kdzoo.data.registry import _builder, build_dataset
from kdzoo.data.splits import few_sample_split, split_train_val, stratified_subset
from kdzoo.data.stream import DataStream
from kdzoo.data.views import IDENTITY, MultiViewDataset, pipeline
from kdzoo.data.wrappers import IndexedDataset, subset
from kdzoo.errors import ConfigError, DatasetError


def few_sample_seed(run_seed: int, subset_seed: int) -> int:
    """CKD draws a fresh subset for every run seed; `dataset.subset.seed` shifts all of them."""
    return run_seed * 100_003 + subset_seed


def subset_streams(d: DatasetConfig, train_set, seed: int, common: dict):
    """(train, val or None) as `dataset.subset` asks: see kdzoo.config.schema.SubsetConfig."""
    s, val_set = d.subset, None

    def held_out_set(indices):  # the evaluation pipeline over training images
        return subset(build_dataset(d.name, "train", augment=False, **common), indices)

    if s.few_sample:
        if s.size is None or s.size <= 1 or s.size != int(s.size):
            raise ConfigError(f"dataset.subset.size: few_sample draws a count of images (> 1), got {s.size}")
        if s.size > len(train_set):
            raise ConfigError(f"dataset.subset.size: {int(s.size)} is larger than the {len(train_set)} training "
                              f"images of {d.name}")
        try:
            keep, held_out = few_sample_split(train_set.targets, int(s.size),
                                              s.val if s.val is not None else FEW_SAMPLE_VAL,
                                              few_sample_seed(seed, s.seed))
        except DatasetError as err:
            raise ConfigError(f"dataset.subset.size: {err}") from None
        return subset(train_set, keep), held_out_set(held_out)
    if s.val is not None:
        keep, held_out = split_train_val(train_set.targets, s.val, s.seed)
        val_set = held_out_set(held_out)
        train_set = subset(train_set, keep)
    if s.size is not None:
        if s.size > 1 and s.size != int(s.size):
            raise ConfigError(f"dataset.subset.size: a fraction <= 1 or a whole count > 1, got {s.size}")
        size = int(s.size) if s.size > 1 else s.size
        train_set = subset(train_set, stratified_subset(train_set.targets, size, seed=s.seed))
    return train_set, val_set


def recipe_streams(d: DatasetConfig, *, seed: int, device: torch.device, channels_last: bool = False,
                   needs_index: bool = False, drop_last: bool = False) -> tuple[dict[str, DataStream], DatasetInfo]:
    """{"train", "test"[, "val"]} streams and the info of what the models see (shape from a real sample)."""
    common = dict(root=d.root, download=d.download, image_size=d.image_size)
    views = dict(d.views) if d.views else {"x": "train"}
    if views == {"x": "train"}:
        train_set = build_dataset(d.name, "train", augment=d.augment, **common)
    else:
        raw = build_dataset(d.name, "train", transform=IDENTITY, **common)
        builder = _builder(d.name)
        train_set = MultiViewDataset(raw, {name: pipeline(p, builder, raw.info, d.augment)
                                           for name, p in views.items()})
    train_set, val_set = subset_streams(d, train_set, seed, common)
    test_set = build_dataset(d.name, "test", augment=False, **common)
    if len(test_set) == 0 or len(train_set) == 0:
        raise DatasetError(f"{d.name}: the {'test' if len(test_set) == 0 else 'training'} split is empty")
    # The shape a model sees is that of a real (test-transformed, so deterministic) sample.
    info = train_set.info.with_input_shape(test_set[0][0].shape)
    stream = dict(seed=seed, num_workers=d.num_workers, device=device, channels_last=channels_last)
    streams = {
        "train": DataStream(IndexedDataset(train_set) if needs_index else train_set, d.batch_size, train=True,
                            drop_last=drop_last, views=tuple(dict.fromkeys(["x", *views])), **stream),
        "test": DataStream(test_set, d.eval_batch_size, **stream),
    }
    if val_set is not None:
        streams["val"] = DataStream(val_set, d.eval_batch_size, **stream)
    if d.loader == "device":
        from kdzoo.data.device_loader import layout

        for s in streams.values():
            layout(s.dataset)  # what it cannot read fails now, in one line
            s.on_device = True
    if d.loader == "dali":
        from kdzoo.data.dali import dali_streams

        streams = dali_streams(streams, d, info, device, needs_index)
    return streams, info


def probe_stream(d: DatasetConfig, train: DataStream, *, seed: int, device: torch.device,
                 channels_last: bool = False) -> DataStream:
    """The `probe` stream: the images of `train` (same subset, same order) under the plain pipeline, with their
    indices, read in order (per-epoch passes, program/epoch_pass.py)."""
    from kdzoo.data.wrappers import probe_dataset

    plain = build_dataset(d.name, "train", augment=False, root=d.root, download=d.download, image_size=d.image_size)
    return DataStream(probe_dataset(train.dataset, plain), d.eval_batch_size, seed=seed, num_workers=d.num_workers,
                      device=device, channels_last=channels_last, on_device=train.on_device)
