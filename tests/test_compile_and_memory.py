"""engine.compile (torch.compile in place: same weights and checkpoint keys as without, with a backend that does
not change numerics) and the peak memory each epoch's metrics line reports."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from tests.conftest import CONFIGS, FAST, run_cli

SMALL = [*FAST, "epochs=1", "dataset.subset=256", "engine.precision=fp32"]


def test_compiled_run_trains_the_same_weights_with_the_same_keys(tmp_path, digits_teacher, capsys):
    runs = {}
    for compiled in (False, True):
        out = tmp_path / f"c{int(compiled)}"
        extra = ["engine.compile=true", "engine.compile_backend=eager"] if compiled else []
        assert run_cli("distill", "-c", CONFIGS / "digits" / "kd.yaml", "--out", out,
                       f"teacher.checkpoint={digits_teacher}", *SMALL, *extra) == 0
        runs[compiled] = load_file(str(out / "checkpoints" / "last.safetensors"))
    assert runs[False].keys() == runs[True].keys()  # no _orig_mod. prefixes
    assert all(torch.equal(runs[False][k], runs[True][k]) for k in runs[False])
    record = json.loads((tmp_path / "c1" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 50 < record["peak_rss_mb"] < 1e6 and "peak_cuda_mb" not in record  # on the CPU


def test_every_running_slot_is_compiled_in_place(tmp_path, digits_teacher):
    from kdzoo.config import load_config
    from kdzoo.engine.trainer import make_engine

    cfg = load_config(CONFIGS / "digits" / "kd.yaml", [*SMALL, f"teacher.checkpoint={digits_teacher}",
                                                        "engine.compile=true", "engine.compile_backend=eager"])
    engine = make_engine(cfg, tmp_path / "r", quiet=True)
    slots = engine.program.models
    assert set(slots) == {"student", "teacher"}
    assert all(slot.features._compiled_call_impl is not None for slot in slots.values())
    engine.lock.release()


def test_unknown_compile_backend_exits_2(tmp_path, capsys):
    code = run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", tmp_path / "r", *SMALL,
                   "engine.compile=true", "engine.compile_backend=nope")
    err = capsys.readouterr().err
    assert code == 2 and "engine.compile_backend: unknown backend 'nope'" in err
    assert not (tmp_path / "r" / "checkpoints").exists()
