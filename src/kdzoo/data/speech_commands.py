"""Google Speech Commands v0.02 (DS-SRD's speech setting) from its folder layout: `root` holds one folder per word
of 1 s, 16 kHz WAV clips, plus `validation_list.txt` and `testing_list.txt` (the official splits; `root` may
also be their parent with `speech_commands_v0.02/`).

12 classes as DS-SRD (after the Kaggle challenge): unknown (every other word), silence, yes, no, up, down, left,
right, on, off, stop, go. train = every clip in neither list, plus silent clips for 10% of its size; test = the
testing list (the validation list is held out of train). Each clip is read with soundfile, padded or cut to 1 s,
and turned into a 32-mel log spectrogram (librosa's melspectrogram, n_fft 2048, hop 512 -> 32 frames; dB below the
clip's peak, floored at -80 and scaled to [0, 1]): a (1, 32, 32) image any zoo CNN takes (`in_channels: 1`).
A clip at another sample rate is refused (one line), not resampled. The spectrograms of a split are computed once
and cached in `root` as `<split>_mel32_<key>.npy` (the key: the clip listing and the settings). Silence clips are
silent (zeros; DS-SRD's loader), and the official test list has none.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from kdzoo.data.checks import missing_data_error
from kdzoo.data.in_memory import InMemoryImageDataset
from kdzoo.data.info import image_info
from kdzoo.data.registry import DatasetBuilder, register_dataset
from kdzoo.errors import DatasetError

CLASSES = "unknown, silence, yes, no, up, down, left, right, on, off, stop, go".split(", ")
SAMPLE_RATE, N_MELS, N_FFT, HOP, TOP_DB = 16_000, 32, 2048, 512, 80.0
SILENCE_SHARE = 0.1
LISTS = ("validation_list.txt", "testing_list.txt")
INFO = image_info("speech_commands", len(CLASSES), 1, N_MELS, (0.0,), (1.0,))
LAYOUT = "<word>/*.wav, validation_list.txt and testing_list.txt (Speech Commands v0.02)"


def data_folder(root: str | None) -> Path:
    base = Path(root or "./data")
    for folder in (base, base / "speech_commands_v0.02"):
        if all((folder / name).is_file() for name in LISTS):
            return folder
    raise missing_data_error("speech_commands", base, LAYOUT, "download and unpack speech_commands_v0.02.tar.gz there")


def clips(folder: Path, split: str) -> list[tuple[str, int]]:
    """(relative path, label) of the split's clips; silence clips are ('', 1)."""
    listed = {name: set(filter(None, (folder / name).read_text().split())) for name in LISTS}
    index = {c: i for i, c in enumerate(CLASSES)}
    if split == "test":
        chosen = sorted(listed["testing_list.txt"])
    else:
        held_out = listed["validation_list.txt"] | listed["testing_list.txt"]
        chosen = sorted(f"{d.name}/{w.name}" for d in folder.iterdir() if d.is_dir() and not d.name.startswith("_")
                        for w in d.glob("*.wav") if f"{d.name}/{w.name}" not in held_out)
    out = [(path, index.get(path.split("/")[0], 0)) for path in chosen]
    if split == "train":
        out += [("", index["silence"])] * int(len(out) * SILENCE_SHARE)
    if not out:
        raise DatasetError(f"speech_commands: no {split} clips under {folder.resolve()}")
    return out


def log_mel(samples: np.ndarray) -> np.ndarray:
    """(32, 32) log-mel spectrogram scaled to [0, 1]."""
    import librosa

    power = librosa.feature.melspectrogram(y=samples, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)
    db = librosa.power_to_db(power, ref=np.max, top_db=TOP_DB) if power.max() > 0 else np.full(power.shape, -TOP_DB)
    return ((db + TOP_DB) / TOP_DB).astype(np.float32)


def read_clip(path: Path) -> np.ndarray:
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    except RuntimeError as err:
        raise DatasetError(f"speech_commands: {path}: not a readable WAV ({err})") from None
    if rate != SAMPLE_RATE:
        raise DatasetError(f"speech_commands: {path} is sampled at {rate} Hz; the clips must be {SAMPLE_RATE} Hz "
                           "(resample them first)")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    return np.pad(samples, (0, max(0, SAMPLE_RATE - len(samples))))[:SAMPLE_RATE]


def spectrograms(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    listing = clips(folder, split)
    key = hashlib.sha256(json.dumps([listing, SAMPLE_RATE, N_MELS, N_FFT, HOP, TOP_DB, SILENCE_SHARE]).encode())
    cache = folder / f"{split}_mel{N_MELS}_{key.hexdigest()[:12]}.npy"  # a changed listing or setting: a new file
    labels = np.array([label for _, label in listing], dtype=np.int64)
    if cache.is_file():
        cached = np.load(cache, allow_pickle=False)
        if len(cached) == len(listing):
            return cached, labels
    from tqdm import tqdm

    images = np.stack([log_mel(read_clip(folder / path) if path else np.zeros(SAMPLE_RATE, dtype=np.float32))
                       for path, _ in tqdm(listing, desc=f"speech_commands {split} spectrograms", leave=False)])
    partial = cache.with_suffix(f".npy.partial{os.getpid()}")  # per process: several may build it at once
    with open(partial, "wb") as f:
        np.save(f, images)
    partial.replace(cache)
    return images, labels


def load(split: str, *, root, download, transform) -> InMemoryImageDataset:
    images, labels = spectrograms(data_folder(root), split)
    return InMemoryImageDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels), classes=CLASSES,
                                transform=transform)


register_dataset(
    "speech_commands",
    "Speech Commands v0.02: 12 classes (10 words, unknown, silence), 1-channel 32x32 log-mel spectrograms",
    DatasetBuilder(info=lambda root: INFO, transform=lambda split, info, augment: None, load=load),
)
