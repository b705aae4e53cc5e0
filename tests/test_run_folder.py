"""One run per folder, and a resume that never silently changes the run: locks, refusals, one-line errors."""
from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdzoo.checkpoints.format import load_weights, save_state, save_weights
from kdzoo.checkpoints.run_folder import LOCK_FILE, RunLock
from kdzoo.checkpoints.store import CheckpointStore, resolve_checkpoint
from kdzoo.config import load_config
from kdzoo.engine.trainer import make_engine
from kdzoo.models import create_model
from tests.conftest import CONFIGS, FAST, REPO, run_cli

TINY = ["epochs=2", "dataset.subset=120", "dataset.batch_size=40", "dataset.eval_batch_size=540", *FAST]
STUDENT = CONFIGS / "digits" / "student.yaml"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdzoo: error: ") and "\n" not in err, err
    return err


@pytest.fixture
def finished(tmp_path) -> Path:
    run = tmp_path / "done"
    assert run_cli("train", "-c", STUDENT, "--out", run, *TINY) == 0
    return run


def test_a_second_run_on_a_locked_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys, time; sys.path.insert(0, {str(REPO / 'src')!r}); "
         f"from kdzoo.checkpoints.run_folder import RunLock; lock = RunLock({str(run)!r}).acquire(); print('held', flush=True); "
         "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert run_cli("train", "-c", STUDENT, "--out", run, *TINY) == 2
        assert f"run folder {run} is in use by another kdzoo process (pid {holder.pid})" in one_line_error(capsys)
        assert not (run / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_cli("train", "-c", STUDENT, "--out", run, *TINY) == 0  # its holder died: the folder is free


def test_lock_of_a_dead_process_is_not_stale(tmp_path):
    run = tmp_path / "stale"
    run.mkdir()
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK_FILE).write_text(proc.stdout)  # a lock file left by a process that is gone
    assert run_cli("train", "-c", STUDENT, "--out", run, *TINY) == 0
    assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_resume_of_a_running_run_is_refused(tmp_path, finished, capsys):
    with RunLock(finished):  # flock is per open file: an open run of this very process blocks too
        assert run_cli("train", "--resume", finished) == 2
        assert "in use by an open run of this process" in one_line_error(capsys)


def test_lock_is_released_with_dataloader_workers_and_by_an_abandoned_engine(tmp_path):
    run = tmp_path / "workers"
    assert run_cli("train", "-c", STUDENT, "--out", run, *TINY, "dataset.num_workers=2") == 0
    RunLock(run).acquire().release()  # forked loader workers did not keep the lock alive
    engine = make_engine(load_config(STUDENT, TINY), run, resume=True, quiet=True)
    del engine  # built, never fitted: the lock goes with the object
    gc.collect()
    with make_engine(load_config(STUDENT, [*TINY, "epochs=3", "schedule.name=multistep"]), tmp_path / "other",
                quiet=True) as engine:
        assert engine.lock._fd is not None
    RunLock(tmp_path / "other").acquire().release()


def test_fresh_run_into_a_folder_with_another_runs_metrics_is_refused(tmp_path, capsys):
    run = tmp_path / "other"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "phase": "main"}\n')
    assert run_cli("train", "-c", STUDENT, "--out", run, *TINY) == 2
    assert "already holds a run" in one_line_error(capsys)
    assert (run / "metrics.jsonl").read_text() == '{"epoch": 1, "phase": "main"}\n'  # nothing lost


def test_resume_without_a_complete_checkpoint_starts_from_scratch(tmp_path, capsys):
    run = tmp_path / "early"
    run.mkdir()
    (run / "config.yaml").write_text(STUDENT.read_text())  # killed before its first checkpoint
    (run / "metrics.jsonl").write_text('{"epoch": 1, "phase": "main", "torn": tr')
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".last.safetensors.x.tmp").write_bytes(b"partial")
    (run / ".summary.json.y.tmp").write_text("{")
    assert run_cli("train", "--resume", run, *TINY[:1], *FAST) == 0
    assert "holds no complete checkpoint: starting from scratch" in capsys.readouterr().out
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert not list(run.rglob("*.tmp"))


def test_resume_with_an_edited_config_is_refused(finished, capsys):
    saved = (finished / "config.yaml").read_text()
    for old, new, key in (("lr: 0.05", "lr: 0.1", "optim.lr"), ("arch: resnet8", "arch: resnet14", "student.arch")):
        assert old in saved
        (finished / "config.yaml").write_text(saved.replace(old, new))
        assert run_cli("train", "--resume", finished) == 2
        err = one_line_error(capsys)
        assert err.startswith(f"kdzoo: error: {key}: ") and "only epochs, engine.*, logging.* and dataset.root" in err
    (finished / "config.yaml").write_text(saved)
    assert run_cli("train", "--resume", finished, "epochs=3") == 2  # cosine: the lr would jump back up
    assert "a cosine schedule spans the run's 2 epochs" in one_line_error(capsys)
    assert run_cli("train", "--resume", finished, "dataset.root=/elsewhere", *FAST) == 0  # data may move


def test_epochs_may_grow_on_resume_with_a_multistep_schedule(tmp_path, capsys):
    run = tmp_path / "steps"
    assert run_cli("train", "-c", STUDENT, "--out", run, *TINY, "schedule.name=multistep") == 0
    assert run_cli("train", "--resume", run, "epochs=1") == 2
    assert "epochs: 1 is fewer than the 2 epochs of main this run has already trained" in one_line_error(capsys)
    assert run_cli("train", "--resume", run, "epochs=3", *FAST) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    assert "epochs: 3" in (run / "config.yaml").read_text()


def test_trained_run_without_resume_state_is_never_wiped(finished, capsys):
    for name in ("checkpoint.json", "last.state.pt"):
        (finished / "checkpoints" / name).unlink()
    for stale in (finished / "checkpoints").glob("c0*"):
        stale.unlink()
    assert run_cli("train", "--resume", finished, *FAST) == 2
    assert "holds trained weights but no resume state" in one_line_error(capsys)
    assert (finished / "summary.json").is_file() and (finished / "checkpoints" / "best.safetensors").is_file()
    assert run_cli("eval", "--checkpoint", finished) == 0  # still usable as it is


def test_resume_on_another_world_size_is_refused(finished, capsys):
    store = CheckpointStore(finished / "checkpoints")
    state = store.load_state()
    state["world_size"] = 2
    save_state(store.state_path(), state)
    assert run_cli("train", "--resume", finished, *FAST) == 2
    assert "checkpointed with 2 processes and is resumed with 1" in one_line_error(capsys)


def test_resume_with_a_recipe_is_refused(finished, capsys):
    assert run_cli("train", "--resume", finished, "-c", STUDENT) == 2
    assert "drop -c" in one_line_error(capsys)
    assert run_cli("train", "--resume", finished.parent / "nothing") == 2
    assert "is not a run folder" in one_line_error(capsys)


def test_resuming_a_finished_run_rewrites_nothing(tmp_path, capsys):
    run = tmp_path / "done_tb"
    assert run_cli("train", "-c", STUDENT, "--out", run, *TINY[:-2], "engine.progress=false") == 0  # with tb/
    files = [p for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    assert run_cli("train", "--resume", run, "engine.progress=false") == 0
    assert "best test_top1" in capsys.readouterr().out
    assert sorted(p for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE) == sorted(files)
    for path, (mtime, data) in before.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data, path


def test_torn_last_metrics_line_on_resume(tmp_path, finished):
    lines = (finished / "metrics.jsonl").read_text().splitlines()
    # as if killed while appending epoch 2's line, with the checkpoint of epoch 1 the last complete one
    run = tmp_path / "torn"
    store = CheckpointStore(run / "checkpoints")
    assert run_cli("train", "-c", STUDENT, "--out", run, *TINY[1:], "epochs=1", "schedule.name=multistep") == 0
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write(lines[1][: len(lines[1]) // 2])
    assert run_cli("train", "--resume", run, "epochs=2", *FAST) == 0
    got = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in got] == [1, 2]
    assert store.pointer()["epoch"] == 2


def test_out_that_is_a_file_or_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    assert run_cli("train", "-c", STUDENT, "--out", blocker, *TINY) == 2
    assert f"run folder {blocker} is a file" in one_line_error(capsys)
    assert run_cli("train", "-c", STUDENT, "--out", blocker / "run", *TINY) == 2
    assert f"is under {blocker}, which is a file" in one_line_error(capsys)
    assert blocker.read_text() == "keep me"


def test_import_over_an_existing_run_is_refused(tmp_path, finished, capsys):
    model = create_model("resnet8", num_classes=10, in_channels=1)
    pth = tmp_path / "published.pth"
    torch.save({"model": model.state_dict()}, pth)
    before = (finished / "checkpoints" / "last.safetensors").read_bytes()
    assert run_cli("import-checkpoint", pth, "--arch", "resnet8", "--num-classes", 10, "--dataset", "digits",
                   "--out", finished) == 2
    assert "already holds a run" in one_line_error(capsys)
    assert (finished / "checkpoints" / "last.safetensors").read_bytes() == before


class Payload:
    """A class a .pth may reference: unpickling it would import and run code."""


def test_hostile_import_error_never_suggests_unsafe_loading(tmp_path, capsys):
    pth = tmp_path / "hostile.pth"
    torch.save({"model": {"w": torch.ones(1)}, "extra": Payload()}, pth)
    assert run_cli("import-checkpoint", pth, "--arch", "resnet8", "--num-classes", 10, "--dataset", "digits",
                   "--out", tmp_path / "imported") == 2
    err = one_line_error(capsys)
    assert "never unpickles" in err and "weights_only=False" not in err and "Payload" in err


def test_corrupted_tensor_bytes_under_an_intact_header(tmp_path, finished, capsys):
    state, meta = load_weights(resolve_checkpoint(finished, "best"))
    teacher = tmp_path / "teacher.safetensors"
    save_weights(teacher, state, meta)
    data = bytearray(teacher.read_bytes())
    data[-100] ^= 0xFF  # one byte of one tensor: the header (and its offsets) stay valid
    teacher.write_bytes(bytes(data))
    assert run_cli("eval", "--checkpoint", teacher) == 2
    assert "do not match the checksum" in one_line_error(capsys)


def test_sigterm_stops_like_ctrl_c_and_resumes(tmp_path):
    run = tmp_path / "term"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "kdzoo.cli", "train", "-c", str(STUDENT), "--out", str(run), "epochs=200",
           "dataset.subset=120", "dataset.batch_size=40", "schedule.name=multistep", "engine.progress=false",
           "engine.tensorboard=false"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not CheckpointStore(run / "checkpoints").has_checkpoint() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "kdzoo: stopped by SIGTERM" in err and f"continue with --resume {run}" in out
    assert not list(run.rglob("*.tmp"))
    done = CheckpointStore(run / "checkpoints").pointer()["epoch"]
    assert run_cli("train", "--resume", run, f"epochs={done + 1}", *FAST) == 0
    assert CheckpointStore(run / "checkpoints").pointer()["epoch"] == done + 1


def test_resume_tolerates_keys_older_runs_lack_and_refuses_other_data(finished, capsys):
    store = CheckpointStore(finished / "checkpoints")
    state = store.load_state()
    del state["config"]["dataset"]["drop_last"]  # a key added to the schema after this run was saved
    save_state(store.state_path(), state)
    assert run_cli("train", "--resume", finished, *FAST) == 0
    state["data"]["train_samples"] = 999  # as if dataset.root now held another dataset
    save_state(store.state_path(), state)
    assert run_cli("train", "--resume", finished, *FAST) == 2
    assert "dataset: the run was checkpointed on" in one_line_error(capsys)
