"""A safetensors header length whose first bytes look like a pickle's magic is still a safetensors file."""
from __future__ import annotations

import struct

import pytest
import torch

from kdzoo.checkpoints.format import load_weights, save_weights
from kdzoo.errors import CheckpointError


def _header_length(path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize("target, modulus", [(0x80, 0x100), (0x4B50, 0x10000)])  # 0x80: a pickle; "PK": a zip
def test_header_lengths_starting_like_a_pickle_load(tmp_path, target, modulus):
    path = tmp_path / "w.safetensors"
    pad = 0
    for _ in range(6):  # metadata padding moves the header length (rounded up to 8 bytes) onto the target
        save_weights(path, {"w": torch.ones(2)}, {"arch": "x", "pad": "p" * pad})
        missing = (target - _header_length(path)) % modulus
        if missing == 0:
            break
        pad += missing
    assert _header_length(path) % modulus == target
    state, meta = load_weights(path)
    assert torch.equal(state["w"], torch.ones(2)) and meta["arch"] == "x"


def test_a_real_pickle_is_still_named(tmp_path):
    path = tmp_path / "w.safetensors"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="pickled PyTorch checkpoint"):
        load_weights(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickles_of_any_protocol_are_named(tmp_path, protocol):
    import pickle

    path = tmp_path / "w.pth"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=protocol))
    with pytest.raises(CheckpointError, match="pickled PyTorch checkpoint"):
        load_weights(path)
