"""Tabular datasets of DS-SRD: UCI covertype and HIGGS, from the .gz files placed in `dataset.root` (no download:
UCI serves them, put them there). Each file is parsed once and cached next to it as a .npy; features are
standardised with statistics of the training split only (DS-SRD's tabular.py used the whole file's).

    covtype   covtype.data.gz: 54 features (10 continuous, standardised; 44 binary kept), label 1..7 -> 0..6;
              train = the first 15,120 rows (the published 11,340 train + 3,780 validation), test = the rest
    higgs     HIGGS.csv.gz: label first, then 28 features; the 21 low-level ones (DS-SRD), all standardised;
              test = the last 500,000 rows (UCI's split), train = 100,000 rows drawn (seed 1) from the others

Samples are float32 vectors; `DatasetInfo.input_shape` is (features,), so `mlp*` zoo models take them.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdzoo.data.checks import missing_data_error
from kdzoo.data.in_memory import InMemoryVectorDataset
from kdzoo.data.info import DatasetInfo
from kdzoo.data.registry import DatasetBuilder, register_dataset
from kdzoo.errors import DatasetError

DEFAULT_ROOT = "./data"
NO_DOWNLOAD = "download it from the UCI repository and place it there (no automatic download)"


@dataclass(frozen=True)
class TabularSpec:
    name: str
    file: str
    num_classes: int
    columns: int  # per row, label included
    features: tuple[int, int]  # [start, stop) of the feature columns used
    label_column: int
    label_offset: int  # subtracted from the label (covtype counts from 1)
    standardise: int  # the first `standardise` used features are standardised (the rest are binary)


COVTYPE = TabularSpec("covtype", "covtype.data.gz", 7, 55, (0, 54), 54, 1, 10)
HIGGS = TabularSpec("higgs", "HIGGS.csv.gz", 2, 29, (1, 22), 0, 0, 21)
COVTYPE_TRAIN = 15_120
HIGGS_TEST, HIGGS_TRAIN, HIGGS_SEED = 500_000, 100_000, 1


def parse_csv(path: Path, columns: int) -> np.ndarray:
    """All rows of a gzipped CSV as float32; a malformed row is a one-line error naming its line number."""
    try:
        with gzip.open(path, "rt") as f:
            return np.loadtxt(f, delimiter=",", dtype=np.float32, ndmin=2)
    except (ValueError, EOFError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        try:
            with gzip.open(path, "rt") as f:
                for number, line in enumerate(f, start=1):
                    cells = line.strip().split(",")
                    try:
                        if len(cells) != columns:
                            raise ValueError(f"{len(cells)} columns, expected {columns}")
                        [float(c) for c in cells]
                    except ValueError as bad:
                        raise DatasetError(f"{path}: line {number} is malformed ({bad})") from None
        except (EOFError, OSError) as broken:  # truncated or not gzip at all
            first = str(broken).splitlines()[0] if str(broken) else type(broken).__name__
        raise DatasetError(f"{path}: could not be read as gzipped CSV ({first})") from None


def load_matrix(spec: TabularSpec, root: str | None) -> np.ndarray:
    """The parsed file (cached as <file>.npy beside it after the first parse)."""
    folder = Path(root or DEFAULT_ROOT)
    path = folder / spec.file
    cache = path.with_suffix(".npy")
    if cache.is_file() and (not path.is_file() or cache.stat().st_mtime >= path.stat().st_mtime):
        cached = np.load(cache, allow_pickle=False)
        if cached.ndim == 2 and cached.shape[1] == spec.columns:
            return cached
    if not path.is_file():
        raise missing_data_error(spec.name, folder, spec.file, NO_DOWNLOAD)
    matrix = parse_csv(path, spec.columns)
    if matrix.shape[1] != spec.columns:
        raise DatasetError(f"{path}: rows have {matrix.shape[1]} columns, expected {spec.columns}")
    partial = cache.with_suffix(f".npy.partial{os.getpid()}")  # per process: several may parse at once
    with open(partial, "wb") as f:
        np.save(f, matrix)
    partial.replace(cache)  # atomic: a killed parse leaves no half cache
    return matrix


def split_rows(spec: TabularSpec, n: int) -> dict[str, np.ndarray]:
    if spec is COVTYPE:
        if n <= COVTYPE_TRAIN:
            raise DatasetError(f"covtype: {n} rows; the split needs more than {COVTYPE_TRAIN} (the published train "
                               "+ validation rows come first)")
        return {"train": np.arange(COVTYPE_TRAIN), "test": np.arange(COVTYPE_TRAIN, n)}
    if n <= HIGGS_TEST:
        raise DatasetError(f"higgs: {n} rows; the split needs more than {HIGGS_TEST} (the last {HIGGS_TEST} are "
                           "the test set)")
    rest = n - HIGGS_TEST
    train = np.sort(np.random.default_rng(HIGGS_SEED).choice(rest, min(HIGGS_TRAIN, rest), replace=False))
    return {"train": train, "test": np.arange(rest, n)}


def load_split(spec: TabularSpec, split: str, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    matrix = load_matrix(spec, root)
    rows = split_rows(spec, len(matrix))
    start, stop = spec.features
    features = matrix[:, start:stop].astype(np.float32)
    labels = matrix[:, spec.label_column].astype(np.int64) - spec.label_offset
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise DatasetError(f"{spec.name}: labels outside 0..{spec.num_classes - 1} after the offset")
    train = features[rows["train"], :spec.standardise]
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-7  # training statistics only
    chosen = features[rows[split]].copy()
    chosen[:, :spec.standardise] = (chosen[:, :spec.standardise] - mean) / std
    return torch.from_numpy(chosen), torch.from_numpy(labels[rows[split]])


def _register(spec: TabularSpec, description: str) -> None:
    width = spec.features[1] - spec.features[0]
    info = DatasetInfo(spec.name, spec.num_classes, (width,), (), ())

    def load(split: str, *, root, download, transform) -> InMemoryVectorDataset:
        features, targets = load_split(spec, split, root)
        return InMemoryVectorDataset(features, targets, info)

    register_dataset(spec.name, description,
                     DatasetBuilder(info=lambda root: info, transform=lambda split, i, augment: None, load=load))


_register(COVTYPE, "UCI covertype: 54 features, 7 classes; 15,120 train / 565,892 test rows (file in root)")
_register(HIGGS, "UCI HIGGS: 21 low-level features, 2 classes; 100k train / 500k test rows (file in root)")
