"""Speech Commands v0.02 from a tiny folder in its real layout (word folders of 16 kHz WAV clips, the official
list files): the 12-class labels, splits, silence clips, spectrogram shape and range, the cache, a refused sample
rate, and a CLI run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from kdzoo.data import build_dataset
from kdzoo.errors import DatasetError
from tests.conftest import CONFIGS, FAST, run_cli

WORDS = {"yes": 4, "no": 4, "cat": 3}  # cat is no command: unknown


def write_speech_commands(root, rate: int = 16_000):
    rng = np.random.default_rng(0)
    for word, n in WORDS.items():
        (root / word).mkdir(parents=True)
        for i in range(n):
            length = rate if i % 2 else rate // 2  # half of them short: padded to 1 s
            soundfile.write(root / word / f"{i:08x}_nohash_0.wav", rng.normal(0, 0.1, length).astype(np.float32), rate)
    (root / "_background_noise_").mkdir()
    soundfile.write(root / "_background_noise_" / "noise.wav", rng.normal(0, 0.1, rate).astype(np.float32), rate)
    (root / "validation_list.txt").write_text("yes/00000001_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("no/00000000_nohash_0.wav\ncat/00000002_nohash_0.wav\n")


def test_splits_labels_silence_and_spectrograms(tmp_path):
    root = tmp_path / "speech_commands_v0.02"
    write_speech_commands(root)
    train = build_dataset("speech_commands", "train", root=str(tmp_path))
    test = build_dataset("speech_commands", "test", root=str(tmp_path))
    assert len(train) == 8 + 0 and len(test) == 2  # 11 clips - 1 validation - 2 test; 10% silence of 8 rounds to 0
    assert sorted(test.targets.tolist()) == [0, 3]  # cat -> unknown (0), no -> 3
    x, _ = train[0]
    assert x.shape == (1, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert len(list(root.glob("train_mel32_*.npy"))) == 1
    assert train.info.input_shape == (1, 32, 32) and train.info.num_classes == 12


def test_silence_is_ten_percent_of_train(tmp_path, monkeypatch):
    from kdzoo.data import speech_commands

    root = tmp_path / "sc"
    write_speech_commands(root)
    monkeypatch.setattr(speech_commands, "SILENCE_SHARE", 0.25)
    train = build_dataset("speech_commands", "train", root=str(root))
    assert len(train) == 10 and train.targets.tolist().count(1) == 2
    assert float(train[len(train) - 1][0].max()) == 0.0  # a silent clip: the floor everywhere


def test_wrong_sample_rate_is_refused(tmp_path):
    write_speech_commands(tmp_path / "sc", rate=8_000)
    with pytest.raises(DatasetError, match="8000 Hz"):
        build_dataset("speech_commands", "train", root=str(tmp_path / "sc"))


def test_missing_lists_say_what_and_where(tmp_path):
    with pytest.raises(DatasetError, match="validation_list.txt"):
        build_dataset("speech_commands", "test", root=str(tmp_path))


def test_cli_trains_a_zoo_cnn_on_spectrograms(tmp_path):
    write_speech_commands(tmp_path / "sc")
    out = tmp_path / "run"
    assert run_cli("train", "-c", CONFIGS / "speech" / "speech_commands.yaml", "--out", out, "epochs=1",
                   f"dataset.root={tmp_path / 'sc'}", "student.arch=resnet8", "dataset.batch_size=4", *FAST) == 0
    assert "test_top1" in json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
