"""One-line `DatasetError`s for missing files, shared by the dataset modules."""
from __future__ import annotations

import os
from pathlib import Path

from kdzoo.errors import DatasetError

DOWNLOAD_HINT = "set dataset.download=true when online"


def _one_line(message: str) -> str:
    """The CLI prints errors on one line; paths and wrapped library messages may contain line breaks."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _absolute(folder: str | os.PathLike) -> Path:
    return Path(folder).expanduser().resolve()


def missing_data_error(
    dataset: str, folder: str | os.PathLike, expected: str, hint: str = DOWNLOAD_HINT
) -> DatasetError:
    """`<dataset>: no data in <abs folder> (expected <expected>); <hint>`."""
    return DatasetError(_one_line(f"{dataset}: no data in {_absolute(folder)} (expected {expected}); {hint}"))


def load_failed_error(dataset: str, folder: str | os.PathLike, error: BaseException) -> DatasetError:
    """A download or read failure (offline, bad archive, corrupt file), wrapped as one line."""
    return DatasetError(_one_line(f"{dataset}: could not load {_absolute(folder)}: {error}"))


def missing_files(folder: Path, names: list[str]) -> list[str]:
    """The names in `names` that are not files in `folder`."""
    return [name for name in names if not (folder / name).is_file()]
