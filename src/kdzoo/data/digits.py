"""scikit-learn's bundled 8x8 digits: no download, tiny, held in memory; the default for demos and tests."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from kdzoo.data.in_memory import InMemoryImageDataset
from kdzoo.data.info import DatasetInfo, image_info
from kdzoo.data.registry import DatasetBuilder, register_dataset
from kdzoo.data.transforms import small_image_transform

MAX_PIXEL = 16.0  # load_digits pixels are counts 0..16
TEST_FRACTION = 0.3
SPLIT_SEED = 0
# Mean / std of the 1257 training images after scaling to [0, 1] (computed once, fixed split).
INFO = image_info("digits", 10, 1, 8, (0.3056,), (0.3761,))


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import (
        load_digits,  # imported lazily: scikit-learn adds ~2 s to `import kdzoo.data`
    )

    bunch = load_digits()
    return bunch.images, bunch.target


@lru_cache(maxsize=1)
def _split() -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, labels = _digits()
    train, test = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return {"train": np.sort(train), "test": np.sort(test)}


def split_indices(split: str) -> np.ndarray:
    """Sorted indices into `load_digits()` of the fixed stratified 70/30 split (1257 train / 540 test)."""
    return _split()[split].copy()


def load(split: str, *, root: str | None, download: bool, transform) -> InMemoryImageDataset:
    """`root` and `download` are ignored: the data ships with scikit-learn."""
    images, labels = _digits()
    indices = split_indices(split)
    # Float images in [0, 1] (not uint8: 0..16 does not map exactly onto 0..255).
    image_tensor = torch.from_numpy(images[indices] / MAX_PIXEL).to(torch.float32).unsqueeze(1)
    return InMemoryImageDataset(
        image_tensor, torch.from_numpy(labels[indices]), classes=[str(d) for d in range(10)], transform=transform
    )


def _transform(split: str, info: DatasetInfo, augment: bool):
    # A one-pixel shift only: flipping would turn some digits into others.
    return small_image_transform(info, train=split == "train", augment=augment, native_size=8, padding=1, flip=False)


register_dataset(
    "digits",
    "scikit-learn digits: 1257/540 8x8 grayscale digits, 10 classes (bundled, no download)",
    DatasetBuilder(info=lambda root: INFO, transform=_transform, load=load),
)
