"""Checkpoint files: atomic safetensors with metadata; pickles, truncation and wrong shapes refused."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from kdzoo.checkpoints.format import (
    load_state_dict_strict,
    load_weights,
    read_meta,
    save_weights,
)
from kdzoo.checkpoints.load import load_model
from kdzoo.errors import CheckpointError
from kdzoo.models import create_model


def test_roundtrip_keeps_tensors_and_metadata(tmp_path):
    model = create_model("resnet8", num_classes=10, in_channels=1)
    meta = {"arch": "resnet8", "num_classes": 10, "in_channels": 1, "dataset": "digits", "metrics": {"top1": 90.5}}
    path = tmp_path / "ck.safetensors"
    save_weights(path, model.state_dict(), meta)
    state, got = load_weights(path)
    assert got == meta and read_meta(path) == meta
    assert (tmp_path / "ck.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # temp file renamed away
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)
    loaded, _, _ = load_model(path)
    assert isinstance(loaded, nn.Module)


def test_pickle_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle executed')",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="pickle"):
        load_weights(path)
    zipped = tmp_path / "torch.pth"
    torch.save({"model": {}}, zipped)
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_weights(zipped)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "ck.safetensors"
    save_weights(path, {"w": torch.randn(64, 64)}, {"arch": "x", "num_classes": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_weights(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="truncated"):
        load_weights(path)


def test_wrong_architecture_is_one_line(tmp_path):
    small = create_model("resnet8", num_classes=10)
    other = create_model("resnet14", num_classes=10)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(small, other.state_dict(), "ck")
    assert "missing" in str(err.value) or "unexpected" in str(err.value)
    assert "\n" not in str(err.value)
    wrong_classes = create_model("resnet8", num_classes=100).state_dict()
    with pytest.raises(CheckpointError, match="another shape"):
        load_state_dict_strict(small, wrong_classes, "ck")
