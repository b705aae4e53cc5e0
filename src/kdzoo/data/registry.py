"""The dataset registry and the entry points that use it: `build_dataset`, `dataset_info`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch.utils.data import Dataset

from kdzoo.data.info import DatasetInfo
from kdzoo.errors import DatasetError, KdzooError
from kdzoo.registry import Registry

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetBuilder:
    """How to describe, transform and load one dataset.

    info(root) -> DatasetInfo                      cheap; may scan class folders
    transform(split, info, augment) -> callable    the standard pipeline for a split
    load(split, root, download, transform) -> Dataset yielding (image, int label), with `.targets` (LongTensor)
    """

    info: Callable[[str | None], DatasetInfo]
    transform: Callable[[str, DatasetInfo, bool], Callable]
    load: Callable[..., Dataset]


DATASETS: Registry[DatasetBuilder] = Registry("dataset")


def register_dataset(name: str, description: str, builder: DatasetBuilder) -> DatasetBuilder:
    return DATASETS.register(name, description)(builder)


def list_datasets() -> list[str]:
    return DATASETS.names()


def _builder(name: str) -> DatasetBuilder:
    try:
        return DATASETS.get(name)
    except KdzooError as error:  # the shared registry raises the generic error; callers catch DatasetError
        raise DatasetError(str(error)) from None


def _check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"{name}: unknown split {split!r}; use one of {', '.join(SPLITS)}")


def dataset_info(name: str, root: str | None = None) -> DatasetInfo:
    """Static facts for `name`; for `imagefolder` this scans the class folders under `root`."""
    return _builder(name).info(root)


def build_dataset(
    name: str,
    split: str,
    *,
    root: str | None = None,
    download: bool = False,
    augment: bool = True,
    image_size: int | None = None,
    transform: Callable | None = None,
) -> Dataset:
    """Load `split` ("train" or "test") of dataset `name`.

    The dataset yields `(image, int label)` and has `.targets` (LongTensor, index order) and `.info`.
    `image_size` resizes (for transfer / linear probes) and is reflected in `.info.image_size`.
    A custom `transform` replaces the standard one; it receives a uint8 CHW tensor (float in [0, 1]
    for `digits`), or a PIL image for `imagefolder`.
    """
    builder = _builder(name)
    _check_split(name, split)
    info = builder.info(root)
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise DatasetError(f"{name}: image_size must be a positive integer, got {image_size!r}")
        info = info.with_image_size(image_size)
    if transform is None:
        transform = builder.transform(split, info, augment)
    dataset = builder.load(split, root=root, download=download, transform=transform)
    dataset.info = info
    return dataset
