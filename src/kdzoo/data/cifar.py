"""CIFAR-10 / CIFAR-100 from torchvision's python-pickle layout (`cifar-10-batches-py/`, `cifar-100-python/`)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torchvision import datasets

from kdzoo.data.checks import load_failed_error, missing_data_error, missing_files
from kdzoo.data.in_memory import InMemoryImageDataset
from kdzoo.data.info import DatasetInfo, image_info
from kdzoo.data.registry import DatasetBuilder, register_dataset
from kdzoo.data.transforms import small_image_transform

DEFAULT_ROOT = "./data"

CIFAR10_INFO = image_info("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_INFO = image_info("cifar100", 100, 3, 32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


def _without_md5(file_list: list[list[str]]) -> list[list]:
    return [[filename, None] for filename, _ in file_list]


# torchvision md5-hashes every batch file (~180 MB) on each construction. These subclasses check presence
# only: loading stays fast, and copies re-pickled by other tools (or test fixtures) load too. A download
# still verifies the archive's md5 (download_and_extract_archive uses tgz_md5), and a corrupt pickle fails
# loudly when read.
class PresenceCheckedCIFAR10(datasets.CIFAR10):
    train_list = _without_md5(datasets.CIFAR10.train_list)
    test_list = _without_md5(datasets.CIFAR10.test_list)
    meta = {**datasets.CIFAR10.meta, "md5": None}


class PresenceCheckedCIFAR100(datasets.CIFAR100):
    train_list = _without_md5(datasets.CIFAR100.train_list)
    test_list = _without_md5(datasets.CIFAR100.test_list)
    meta = {**datasets.CIFAR100.meta, "md5": None}


def _loader(name: str, cifar_class: type[datasets.CIFAR10]):
    def load(split: str, *, root: str | None, download: bool, transform) -> InMemoryImageDataset:
        root = os.path.expanduser(root or DEFAULT_ROOT)
        folder = Path(root) / cifar_class.base_folder
        needed = [filename for filename, _ in cifar_class.train_list + cifar_class.test_list]
        needed.append(cifar_class.meta["filename"])
        if missing_files(folder, needed) and not download:
            raise missing_data_error(name, root, f"{cifar_class.base_folder}/")
        try:
            tv_dataset = cifar_class(root, train=split == "train", download=download)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:  # offline, bad archive, bad pickle
            raise load_failed_error(name, folder, error) from None
        # HWC uint8 -> one NCHW tensor, so transforms run on tensors.
        images = torch.from_numpy(tv_dataset.data).permute(0, 3, 1, 2)
        targets = torch.tensor(tv_dataset.targets)
        return InMemoryImageDataset(images, targets, classes=tv_dataset.classes, transform=transform)

    return load


def _cifar_transform(split: str, info: DatasetInfo, augment: bool):
    return small_image_transform(info, train=split == "train", augment=augment, native_size=32, padding=4, flip=True)


register_dataset(
    "cifar10",
    "CIFAR-10: 50k/10k 32x32 RGB images, 10 classes (torchvision pickles under root/cifar-10-batches-py)",
    DatasetBuilder(
        info=lambda root: CIFAR10_INFO, transform=_cifar_transform, load=_loader("cifar10", PresenceCheckedCIFAR10)
    ),
)
register_dataset(
    "cifar100",
    "CIFAR-100: 50k/10k 32x32 RGB images, 100 classes (torchvision pickles under root/cifar-100-python)",
    DatasetBuilder(
        info=lambda root: CIFAR100_INFO, transform=_cifar_transform, load=_loader("cifar100", PresenceCheckedCIFAR100)
    ),
)
