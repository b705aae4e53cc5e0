"""STL-10 (labelled train/test only) from torchvision's binary layout `stl10_binary/`."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from kdzoo.data.checks import load_failed_error, missing_data_error, missing_files
from kdzoo.data.in_memory import InMemoryImageDataset
from kdzoo.data.info import DatasetInfo, image_info
from kdzoo.data.registry import DatasetBuilder, register_dataset
from kdzoo.data.transforms import small_image_transform

DEFAULT_ROOT = "./data"
INFO = image_info("stl10", 10, 3, 96, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
SPLIT_FILES = {"train": ["train_X.bin", "train_y.bin"], "test": ["test_X.bin", "test_y.bin"]}


class SplitCheckedSTL10(datasets.STL10):
    """torchvision's STL10, checking only that the requested split's files exist.

    The stock check md5-hashes every file and requires the 2.7 GB `unlabeled_X.bin` even for train/test.
    A download still verifies the archive's md5.
    """

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return not missing_files(folder, SPLIT_FILES[self.split])


def load(split: str, *, root: str | None, download: bool, transform) -> InMemoryImageDataset:
    root = os.path.expanduser(root or DEFAULT_ROOT)
    folder = Path(root) / SplitCheckedSTL10.base_folder
    if missing_files(folder, SPLIT_FILES[split]) and not download:
        raise missing_data_error("stl10", root, f"stl10_binary/{' and '.join(SPLIT_FILES[split])}")
    try:
        tv_dataset = SplitCheckedSTL10(root, split=split, download=download)
    except (OSError, RuntimeError, ValueError) as error:  # offline, bad archive, truncated file
        raise load_failed_error("stl10", folder, error) from None
    images = torch.from_numpy(np.ascontiguousarray(tv_dataset.data))  # already N, C, H, W
    classes = getattr(tv_dataset, "classes", None) or CLASSES
    targets = torch.from_numpy(tv_dataset.labels.astype(np.int64))
    return InMemoryImageDataset(images, targets, classes=classes, transform=transform)


def _transform(split: str, info: DatasetInfo, augment: bool):
    return small_image_transform(info, train=split == "train", augment=augment, native_size=96, padding=12, flip=True)


register_dataset(
    "stl10",
    "STL-10: 5k/8k labelled 96x96 RGB images, 10 classes (torchvision binaries under root/stl10_binary)",
    DatasetBuilder(info=lambda root: INFO, transform=_transform, load=load),
)
