"""ImageNet (ILSVRC-2012) as unpacked: root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG, with the standard
transforms (train: RandomResizedCrop(224) + flip; test: Resize(256) + CenterCrop(224); ImageNet mean/std).
Class indices are the sorted train folders (torchvision's ImageFolder order, what torchvision's weights use).

The val archive unpacks flat (50,000 files in one folder): `kdzoo imagenet-valprep ROOT --labels FILE` sorts them
into class folders first (data/imagenet_valprep.py). No download: ImageNet is licensed per user.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from kdzoo.data.imagefolder import FixedClassImageFolder, class_names
from kdzoo.data.info import DatasetInfo, image_info
from kdzoo.data.registry import DatasetBuilder, register_dataset
from kdzoo.data.transforms import IMAGENET_MEAN, IMAGENET_STD, imagenet_transform
from kdzoo.errors import DatasetError

DEFAULT_ROOT = "./data/imagenet"
SIZE = 224
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def _root(root: str | None) -> Path:
    return Path(root or DEFAULT_ROOT).expanduser()


def check_root(root: Path) -> None:
    """train/ and val/ must both be there, val/ sorted into class folders (one-line errors saying which)."""
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DatasetError(f"imagenet: {root.resolve() / split} is missing; expected {root}/train/<wnid>/ and "
                               f"{root}/val/<wnid>/ (ILSVRC-2012 as unpacked; no automatic download)")
    flat = [p for p in (root / "val").iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if flat:
        raise DatasetError(f"imagenet: {root / 'val'} holds {len(flat)} images outside class folders; sort them "
                           f"first: kdzoo imagenet-valprep {root} --labels <valprep.sh | LOC_val_solution.csv>")


def info(root: str | None) -> DatasetInfo:
    folder = _root(root)
    check_root(folder)
    return image_info("imagenet", len(class_names(folder)), 3, SIZE, IMAGENET_MEAN, IMAGENET_STD)


def load(split: str, *, root: str | None, download: bool, transform) -> Dataset:
    folder = _root(root)
    check_root(folder)
    classes = class_names(folder)
    split_folder = folder / ("train" if split == "train" else "val")
    dataset = FixedClassImageFolder(split_folder, classes, transform)
    if len(dataset) == 0:
        raise DatasetError(f"imagenet: no images in {split_folder.resolve()}/<wnid>/")
    unknown = sorted({p.name for p in split_folder.iterdir() if p.is_dir()} - set(classes))
    if unknown:
        raise DatasetError(f"imagenet: {split_folder}/{unknown[0]} is not a class of {folder / 'train'}")
    return dataset


def _transform(split: str, info: DatasetInfo, augment: bool):
    return imagenet_transform(info, train=split == "train", augment=augment)


register_dataset("imagenet", "ILSVRC-2012 as unpacked (root/train/<wnid>, root/val/<wnid>); 224x224; no download",
                 DatasetBuilder(info=info, transform=_transform, load=load))
