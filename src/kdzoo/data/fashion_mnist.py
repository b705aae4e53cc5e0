"""Fashion-MNIST read straight from its IDX files (gzipped or not) into uint8 tensors.

Looks in the Debian layout (the four *-ubyte.gz files directly in the folder, package
dataset-fashion-mnist) and in torchvision's layout (`<root>/FashionMNIST/raw/`), which `download` fills.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from kdzoo.data.checks import load_failed_error, missing_data_error
from kdzoo.data.in_memory import InMemoryImageDataset
from kdzoo.data.info import DatasetInfo, image_info
from kdzoo.data.registry import DatasetBuilder, register_dataset
from kdzoo.data.transforms import small_image_transform
from kdzoo.errors import DatasetError

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
DOWNLOAD_ROOT = "./data"  # where `download` puts torchvision's layout when no root is given
TORCHVISION_SUBFOLDER = Path("FashionMNIST") / "raw"

INFO = image_info("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,))
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILE_PREFIX = {"train": "train", "test": "t10k"}

_IDX_UINT8 = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file: two zero bytes, dtype code, ndim, big-endian uint32 dims, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UINT8:
        raise DatasetError(f"fashion_mnist: {path} is not a uint8 IDX file")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise DatasetError(f"fashion_mnist: {path} is truncated (header says {shape})")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _candidate_folders(root: str | None) -> list[Path]:
    if root is None:
        return [Path(DEBIAN_ROOT), Path(DOWNLOAD_ROOT) / TORCHVISION_SUBFOLDER]
    return [Path(root), Path(root) / TORCHVISION_SUBFOLDER]


def _find_split_files(root: str | None, split: str) -> tuple[Path, Path] | None:
    """(images, labels) paths from the first candidate folder that has both."""
    prefix = FILE_PREFIX[split]
    for folder in _candidate_folders(root):
        images = _find_file(folder, f"{prefix}-images-idx3-ubyte")
        labels = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            return images, labels
    return None


def _missing(root: str | None, split: str) -> DatasetError:
    prefix = FILE_PREFIX[split]
    first, second = _candidate_folders(root)
    return missing_data_error(
        "fashion_mnist",
        first,
        f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz, here or in {second.resolve()}/",
        "install the Debian package dataset-fashion-mnist or set dataset.download=true when online",
    )


def load(split: str, *, root: str | None, download: bool, transform) -> InMemoryImageDataset:
    root = os.path.expanduser(root) if root else None
    files = _find_split_files(root, split)
    if files is None and download:
        download_root = root or DOWNLOAD_ROOT
        try:
            datasets.FashionMNIST(download_root, train=split == "train", download=True)
        except (OSError, RuntimeError) as error:
            raise load_failed_error("fashion_mnist", download_root, error) from None
        files = _find_split_files(root, split)
    if files is None:
        raise _missing(root, split)
    images_path, labels_path = files
    images = torch.from_numpy(read_idx(images_path).copy()).unsqueeze(1)  # copy: frombuffer is read-only
    labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))
    if images.shape[1:] != (1, 28, 28) or len(images) != len(labels):
        shapes = f"{tuple(images.shape)} / {tuple(labels.shape)}"
        raise DatasetError(f"fashion_mnist: unexpected image / label shapes {shapes} in {images_path.parent}")
    return InMemoryImageDataset(images, labels, classes=CLASSES, transform=transform)


def _transform(split: str, info: DatasetInfo, augment: bool):
    return small_image_transform(info, train=split == "train", augment=augment, native_size=28, padding=2, flip=True)


register_dataset(
    "fashion_mnist",
    "Fashion-MNIST: 60k/10k 28x28 grayscale clothing images, 10 classes (IDX files; Debian package or download)",
    DatasetBuilder(info=lambda root: INFO, transform=_transform, load=load),
)
