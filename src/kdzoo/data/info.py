"""`DatasetInfo`: what a model and the transforms need to know about a dataset."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset. `input_shape` is one sample's shape as a model sees it, after the
    transforms: (channels, height, width) for images, (features,) for tabular vectors, (channels, mels,
    frames) for spectrograms; the engine replaces it by the shape of a real sample."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_channels(self) -> int:
        """What a model's first layer takes: the channels of an image, the features of a vector."""
        return self.input_shape[0]

    @property
    def image_size(self) -> Optional[int]:
        """The side of square images; None for any other input."""
        if len(self.input_shape) == 3 and self.input_shape[1] == self.input_shape[2]:
            return self.input_shape[1]
        return None

    def with_image_size(self, size: int) -> "DatasetInfo":
        return replace(self, input_shape=(self.in_channels, size, size))

    def with_input_shape(self, shape: tuple[int, ...]) -> "DatasetInfo":
        return replace(self, input_shape=tuple(int(d) for d in shape))


def image_info(name: str, num_classes: int, channels: int, size: int, mean: tuple[float, ...],
               std: tuple[float, ...]) -> DatasetInfo:
    """The info of a dataset of square `size` x `size` images."""
    return DatasetInfo(name, num_classes, (channels, size, size), mean, std)
