"""Image folders in the ImageNet layout or the TinyImageNet layout (detected from the files).

ImageNet:     root/train/<class>/*.JPEG and root/val/<class>/*.JPEG (val sorted into class folders).
TinyImageNet: root/train/<wnid>/images/*.JPEG and root/val/images/*.JPEG + root/val/val_annotations.txt.
Class indices always come from root/train, so a test folder lacking some classes still lines up.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from kdzoo.data.checks import missing_data_error
from kdzoo.data.info import DatasetInfo, image_info
from kdzoo.data.registry import DatasetBuilder, register_dataset
from kdzoo.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagenet_transform,
    small_image_transform,
)
from kdzoo.errors import DatasetError

DEFAULT_ROOT = "./data/imagenet"
IMAGENET_SIZE = 224
TINY_SIZE, TINY_PADDING = 64, 8
TINY_NAME = "tinyimagenet"  # DatasetInfo.name for the TinyImageNet layout; selects its transforms
TINY_ANNOTATIONS = Path("val") / "val_annotations.txt"
NO_DOWNLOAD_HINT = "imagefolder data cannot be downloaded; set dataset.root to the dataset folder"
EXPECTED_LAYOUT = (
    "train/<class>/ and val/<class>/ (ImageNet) or TinyImageNet's train/<wnid>/images/ and val/val_annotations.txt"
)


def _root(root: str | None) -> Path:
    return Path(os.path.expanduser(root or DEFAULT_ROOT))


def is_tiny_layout(root: Path) -> bool:
    return (root / TINY_ANNOTATIONS).is_file()


def class_names(root: Path) -> list[str]:
    """Sorted class folder names under root/train (ImageFolder's own ordering)."""
    train = root / "train"
    classes = sorted(entry.name for entry in os.scandir(train) if entry.is_dir()) if train.is_dir() else []
    if not classes:
        raise missing_data_error("imagefolder", root, EXPECTED_LAYOUT, NO_DOWNLOAD_HINT)
    return classes


def info(root: str | None) -> DatasetInfo:
    folder = _root(root)
    num_classes = len(class_names(folder))
    if is_tiny_layout(folder):
        return image_info(TINY_NAME, num_classes, 3, TINY_SIZE, IMAGENET_MEAN, IMAGENET_STD)
    return image_info("imagefolder", num_classes, 3, IMAGENET_SIZE, IMAGENET_MEAN, IMAGENET_STD)


class FixedClassImageFolder(ImageFolder):
    """ImageFolder whose class list is given (the train classes) instead of read from its own folder."""

    def __init__(self, root: Path, classes: list[str], transform=None):
        self._given_classes = classes
        # allow_empty: an evaluation folder may hold only some of the classes.
        super().__init__(str(root), transform=transform, allow_empty=True)
        self.targets = torch.tensor(self.targets, dtype=torch.long)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._given_classes, {name: index for index, name in enumerate(self._given_classes)}


class TinyImageNetVal(Dataset):
    """TinyImageNet's flat val/images folder, labelled by val_annotations.txt (file, wnid, box)."""

    def __init__(self, root: Path, classes: list[str], transform=None):
        class_to_idx = {name: index for index, name in enumerate(classes)}
        self.classes, self.class_to_idx, self.transform = classes, class_to_idx, transform
        self.samples: list[tuple[str, int]] = []
        for line_number, line in enumerate((root / TINY_ANNOTATIONS).read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in class_to_idx:
                where = f"{root / TINY_ANNOTATIONS}:{line_number}"
                raise DatasetError(f"imagefolder: {where}: expected '<file><TAB><wnid of a train class>'")
            self.samples.append((str(root / "val" / "images" / fields[0]), class_to_idx[fields[1]]))
        self.targets = torch.tensor([target for _, target in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        image = default_loader(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, target


def _split_folder(root: Path, split: str) -> Path:
    if split == "train":
        return root / "train"
    # ImageNet calls its labelled evaluation split "val"; accept "test" too.
    return root / "val" if (root / "val").is_dir() else root / "test"


def load(split: str, *, root: str | None, download: bool, transform) -> Dataset:
    folder = _root(root)
    classes = class_names(folder)
    if split == "test" and is_tiny_layout(folder):
        return TinyImageNetVal(folder, classes, transform)
    split_folder = _split_folder(folder, split)
    dataset = FixedClassImageFolder(split_folder, classes, transform) if split_folder.is_dir() else None
    if dataset is None or len(dataset) == 0:
        raise DatasetError(
            f"imagefolder: no images in {split_folder.resolve()}/<class>/; "
            "ImageNet's val images must be sorted into class folders first"
        )
    return dataset


def _transform(split: str, info: DatasetInfo, augment: bool):
    if info.name == TINY_NAME:
        return small_image_transform(
            info,
            train=split == "train",
            augment=augment,
            native_size=TINY_SIZE,
            padding=TINY_PADDING,
            flip=True,
            from_pil=True,
        )
    return imagenet_transform(info, train=split == "train", augment=augment)


register_dataset(
    "imagefolder",
    "ImageNet-style class folders (root/train, root/val) or TinyImageNet (detected); no download",
    DatasetBuilder(info=info, transform=_transform, load=load),
)
register_dataset(
    "tinyimagenet",
    "TinyImageNet (tiny-imagenet-200 as unpacked: train/<wnid>/images, val/val_annotations.txt); imagefolder's loader",
    DatasetBuilder(info=info, transform=_transform, load=load),
)
