"""Shared fixtures: tiny runs on the embedded digits dataset, made once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kdzoo.cli import main as kdzoo_main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# Tests are about behaviour, not speed: keep threads low so parallel pieces do not fight for 2 cores.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def run_cli(*args: str) -> int:
    return kdzoo_main([str(a) for a in args])


FAST = ["engine.progress=false", "engine.tensorboard=false"]


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """A 2-epoch resnet8x4 teacher on digits (a run folder)."""
    out = tmp_path_factory.mktemp("runs") / "teacher"
    code = run_cli("train", "-c", CONFIGS / "digits" / "teacher.yaml", "--out", out, "epochs=2",
                   "student.arch=resnet8x4", *FAST)
    assert code == 0
    return out


@pytest.fixture(scope="session")
def digits_teacher_32x4(tmp_path_factory) -> Path:
    """A 1-epoch resnet32x4 teacher on digits, for method runs on same- and cross-architecture pairs."""
    out = tmp_path_factory.mktemp("runs") / "teacher32x4"
    code = run_cli("train", "-c", CONFIGS / "digits" / "teacher.yaml", "--out", out, "epochs=1", *FAST)
    assert code == 0
    return out
