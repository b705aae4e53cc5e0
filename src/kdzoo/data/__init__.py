"""Datasets, transforms, samplers and loaders.

Every dataset yields `(image, int label)` and carries `.targets` (LongTensor) and `.info` (DatasetInfo).
"""
from kdzoo.data.info import DatasetInfo, image_info
from kdzoo.data.loaders import (
    SeededDataLoader,
    ShardSampler,
    make_loader,
    seed_worker,
    set_loader_epoch,
)
from kdzoo.data.registry import (
    DATASETS,
    DatasetBuilder,
    build_dataset,
    dataset_info,
    list_datasets,
)
from kdzoo.data.splits import split_train_val, stratified_subset
from kdzoo.data.wrappers import IndexedDataset, LabeledSubset, subset

# Importing a dataset module registers it; the order here is the order `list_datasets()` reports.
from kdzoo.data import digits, fashion_mnist, cifar, stl10, imagefolder, imagenet, tabular, speech_commands  # noqa: E402,F401  isort: skip

__all__ = [
    "DATASETS",
    "DatasetBuilder",
    "DatasetInfo",
    "image_info",
    "IndexedDataset",
    "LabeledSubset",
    "SeededDataLoader",
    "ShardSampler",
    "build_dataset",
    "dataset_info",
    "list_datasets",
    "make_loader",
    "seed_worker",
    "set_loader_epoch",
    "split_train_val",
    "stratified_subset",
    "subset",
]
