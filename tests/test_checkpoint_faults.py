"""Checkpoints as one atomic unit: a fault at every step of the checkpoint sequence (an exception, a kill, a full
disk) leaves a folder that resumes to the same final weights as an uninterrupted run."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from kdzoo.checkpoints import format as checkpoint_module
from kdzoo.checkpoints.format import load_weights
from kdzoo.checkpoints.store import POINTER, CheckpointStore, resolve_checkpoint
from kdzoo.config import load_config
from kdzoo.engine.trainer import make_engine
from kdzoo.errors import CheckpointError
from tests.conftest import CONFIGS, FAST, REPO, run_cli

TINY = ["epochs=2", "dataset.subset=120", "dataset.batch_size=40", "dataset.eval_batch_size=540", *FAST]


class Crash(BaseException):
    """Not an Exception: no handler in kdzoo may swallow it, as with a kill."""


def tiny_cfg(*extra: str):
    return load_config(CONFIGS / "digits" / "student.yaml", [*TINY, *extra])


def final_weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {which: load_weights(resolve_checkpoint(run, which))[0] for which in ("last", "best")}


def assert_same(a: dict, b: dict) -> None:
    for which in a:
        assert a[which].keys() == b[which].keys()
        for key in a[which]:
            assert torch.equal(a[which][key], b[which][key]), (which, key)


def assert_clean(run: Path) -> None:
    folder = run / "checkpoints"
    names = {p.name for p in folder.iterdir()}
    assert not [n for n in names if n.endswith(".tmp")], names
    pointer = CheckpointStore(folder).pointer()
    generation = {n for n in names if n.startswith("c0")}
    referenced = {pointer[k] for k in ("last", "best", "state")} | {
        Path(pointer[k]).with_suffix(".json").name for k in ("last", "best")}
    assert generation == referenced, generation ^ referenced
    for name in ("last.safetensors", "best.safetensors", "last.state.pt"):
        assert (folder / name).is_file()


class FaultAt:
    """Counts the file operations of the checkpoint sequence (writes, renames, links, removals inside
    checkpoints/) and raises `error` at operation number `at` (None: only count)."""

    def __init__(self, monkeypatch, at, error=Crash):
        self.at, self.error, self.count, self.names = at, error, 0, []
        for module, name in ((os, "replace"), (os, "link"), (os, "unlink"),
                             (checkpoint_module, "save_file"), (checkpoint_module.torch, "save")):
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name), name))

    def _wrap(self, fn, name):
        def wrapped(*args, **kwargs):
            if any(isinstance(a, (str, os.PathLike)) and "checkpoints" in str(a) for a in args[:2]):
                if self.at is not None and self.count == self.at:
                    self.count += 1
                    raise self.error()
                self.count += 1
                self.names.append(name)
            return fn(*args, **kwargs)
        return wrapped


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    make_engine(tiny_cfg(), run, quiet=True).fit()
    return final_weights(run)


def test_every_step_of_the_checkpoint_sequence_can_fail(tmp_path, monkeypatch, reference):
    with monkeypatch.context() as patch:
        counter = FaultAt(patch, None)
        make_engine(tiny_cfg(), tmp_path / "count", quiet=True).fit()
    steps = counter.count
    assert steps >= 2 * 6, counter.names  # two epochs, each: last, best, state, pointer, links, cleanup
    for at in range(steps):
        run = tmp_path / f"fault{at}"
        with monkeypatch.context() as patch:
            FaultAt(patch, at)
            with pytest.raises(Crash):
                make_engine(tiny_cfg(), run, quiet=True).fit()
        make_engine(tiny_cfg(), run, resume=True, quiet=True).fit()
        assert_same(final_weights(run), reference)
        assert_clean(run)


def test_killed_process_resumes_exactly(tmp_path, reference):
    """A real kill (os._exit, no cleanup at all) between the files of the second checkpoint."""
    script = tmp_path / "killed_run.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.test_checkpoint_faults import FaultAt, tiny_cfg
        from kdzoo.engine.trainer import make_engine

        class Patch:
            def setattr(self, module, name, value):
                setattr(module, name, value)

        fault = FaultAt(Patch(), int(sys.argv[2]), error=lambda: os._exit(137))
        make_engine(tiny_cfg(), sys.argv[1], quiet=True).fit()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    # The first save is operations 0-26 (committed by the pointer's rename at 11), the second 27-58 (at 38).
    for at in (3, 15, 29, 38, 48):
        run = tmp_path / f"killed{at}"
        proc = subprocess.run([sys.executable, str(script), str(run), str(at)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 137, proc.stderr[-2000:]
        assert run_cli("train", "--resume", run, *FAST) == 0
        assert_same(final_weights(run), reference)
        assert_clean(run)


def test_disk_full_is_one_line_and_resumable(tmp_path, monkeypatch, capsys, reference):
    def full():
        return OSError(errno.ENOSPC, "No space left on device")

    for at, label in ((0, "first checkpoint"), (36, "second checkpoint")):  # 27 operations in the first save
        run = tmp_path / label.replace(" ", "_")
        with monkeypatch.context() as patch:
            FaultAt(patch, at, error=full)
            code = run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", run, *TINY)
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err, err
        assert err.startswith(f"kdzoo: error: cannot write a checkpoint in {run / 'checkpoints'}: not enough disk "
                              "space") and "MB needed" in err and f"--resume {run}" in err
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
        if at == 0:
            assert not CheckpointStore(run / "checkpoints").has_checkpoint()
        else:
            assert CheckpointStore(run / "checkpoints").pointer()["epoch"] == 1  # the previous one, intact
        assert run_cli("train", "--resume", run, *FAST) == 0
        restarted = "no complete checkpoint: starting from scratch" in capsys.readouterr().out
        assert restarted == (at == 0)
        assert_same(final_weights(run), reference)


def test_safetensors_disk_full_is_one_line(tmp_path, monkeypatch):
    """A full disk under safetensors' writer raises its own SafetensorError (not an OSError)."""
    store = CheckpointStore(tmp_path / "checkpoints")
    store.save({"w": torch.ones(3)}, {"epoch": 1}, {"x": torch.zeros(2)}, improved=True)

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" })")

    monkeypatch.setattr(checkpoint_module, "save_file", full)
    with pytest.raises(CheckpointError, match="not enough disk space") as err:
        store.save({"w": torch.ones(3)}, {"epoch": 2}, {"x": torch.zeros(2)}, improved=True)
    assert "\n" not in str(err.value) and store.pointer()["epoch"] == 1
    assert not list(store.folder.glob("c000002*"))


def test_torch_write_failure_is_reported_as_disk_full(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path / "checkpoints")
    store.save({"w": torch.ones(3)}, {"epoch": 1}, {"x": torch.zeros(2)}, improved=True)

    def failing_save(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(0, 0, 0))
    with pytest.raises(CheckpointError, match="not enough disk space") as err:
        store.save({"w": torch.ones(3)}, {"epoch": 2}, {"x": torch.zeros(2)}, improved=True)
    assert "\n" not in str(err.value)
    assert store.pointer()["epoch"] == 1
    assert sorted(p.name for p in store.folder.iterdir()) == sorted(
        ["c000001.last.safetensors", "c000001.last.json", "c000001.best.safetensors", "c000001.best.json",
         "c000001.state.pt", POINTER, "last.safetensors", "last.json", "best.safetensors", "best.json",
         "last.state.pt"])


def test_repair_removes_stray_temporary_and_uncommitted_files(tmp_path):
    run = tmp_path / "run"
    make_engine(tiny_cfg("epochs=1"), run, quiet=True).fit()
    folder = run / "checkpoints"
    (folder / ".last.safetensors.abc.tmp").write_bytes(b"half")
    (folder / "c000009.state.pt").write_bytes(b"uncommitted")
    (folder / "last.safetensors").unlink()  # a kill between the commit and the publication
    CheckpointStore(folder).repair()
    assert_clean(run)
