"""`kdzoo sweep`: an Optuna grid x seeds over a recipe, resumable, shared by several workers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdzoo.checkpoints.store import CheckpointStore
from kdzoo.sweep.config import load_sweep
from kdzoo.sweep.study import (
    claim,
    create_study,
    enqueue_missing,
    join_study,
    open_storage,
    run_folder,
)
from tests.conftest import CONFIGS, REPO, run_cli

STUDENT = CONFIGS / "digits" / "student.yaml"
TINY = {"epochs": 1, "dataset.subset_size": 120, "engine.tensorboard": False, "dataset.eval_batch_size": 60}


def _sweep(tmp_path: Path, **changes) -> Path:
    data = {"name": "tiny", "recipe": str(STUDENT), "grid": {"optim.lr": [0.1, 0.05]}, "seeds": [0, 1],
            "overrides": dict(TINY), "out": str(tmp_path / "out"), "heartbeat": {"interval": 1, "grace": 2}}
    data.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _trials(path: Path):
    cfg = load_sweep(path)
    return cfg, join_study(cfg, open_storage(cfg)).get_trials(deepcopy=False)


def _epoch_lines(run: Path) -> int:
    return sum('"at_best"' not in line for line in (run / "metrics.jsonl").read_text().splitlines())


def test_two_worker_processes_on_one_sqlite_storage_run_every_trial_exactly_once(tmp_path):
    path = _sweep(tmp_path, grid={"optim.lr": [0.1, 0.05, 0.02]})
    cfg = load_sweep(path)
    study = create_study(cfg, open_storage(cfg))
    assert enqueue_missing(study, cfg) == 6
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "kdzoo.cli", "sweep", "-c", str(path), "--worker", "--threads", "1"]
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    _, trials = _trials(path)
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    claimed = [line for out in outputs for line in out.splitlines() if ": trial " in line and " -> " in line]
    assert len(claimed) == 6  # six claims in all, no trial twice
    assert len({line.split(" -> ")[1] for line in claimed}) == 6
    assert all(c for c in (sum(": trial " in line for line in out.splitlines()) for out in outputs))  # both worked
    for t in trials:
        assert _epoch_lines(Path(t.user_attrs["run"])) == 1  # trained once
        assert t.value == json.loads((Path(t.user_attrs["run"]) / "summary.json").read_text())["best_value"]


def test_a_finished_sweep_reruns_nothing_and_reports_mean_and_std(tmp_path, capsys):
    path = _sweep(tmp_path)
    assert run_cli("sweep", "-c", path) == 0
    first = capsys.readouterr().out
    assert "4 to run" in first and "| 0.1 | 2/2 |" in first and "Best setting" in first
    assert run_cli("sweep", "-c", path) == 0
    assert "0 to run" in capsys.readouterr().out
    cfg, trials = _trials(path)
    assert len(trials) == 4
    table = (cfg.out / "report.md").read_text()
    runs = json.loads((cfg.out / "results.json").read_text())["rows"]
    assert [len(r["val"]) for r in runs] == [2, 2]
    import statistics

    mean, std = statistics.fmean(runs[0]["val"]), statistics.stdev(runs[0]["val"])
    assert f"{mean:.2f} ± {std:.2f}" in table


def test_a_killed_trial_is_failed_by_its_heartbeat_and_rerun(tmp_path, capsys):
    path = _sweep(tmp_path, grid={"optim.lr": [0.1]}, seeds=[0, 1])
    cfg = load_sweep(path)
    storage = open_storage(cfg)
    study = create_study(cfg, storage)
    enqueue_missing(study, cfg)
    taken = claim(study)  # a worker claimed it, beat once and died
    storage.record_heartbeat(taken)
    time.sleep(3)  # past the 2 s grace
    assert run_cli("sweep", "-c", path) == 0
    out = capsys.readouterr().out
    _, trials = _trials(path)
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]  # the dead one failed; its retry completed
    assert "| 0.1 | 2/2 |" in out and "Failed trials" not in out


def test_failed_trials_are_listed_and_rerun_by_the_next_sweep(tmp_path, capsys):
    path = _sweep(tmp_path, grid={"dataset.batch_size": [32, 5000]}, seeds=[0],
                  overrides={**TINY, "dataset.drop_last": True})
    assert run_cli("sweep", "-c", path) == 1
    out = capsys.readouterr().out
    assert "Failed trials:" in out and "dataset.batch_size" in out.split("Failed trials:")[1]
    assert "| 32 | 1/1 |" in out and "| 5000 | 0/1 |" in out
    assert run_cli("sweep", "-c", path) == 1  # tried again, fails again, still listed once
    out = capsys.readouterr().out
    assert "1 to run" in out and out.count("- trial ") == 1


@pytest.mark.parametrize("changes, says", [
    ({"grid": {"optim.nope": [1]}}, "grid.optim.nope"),
    ({"grid": {"methods.ckd.pos_and_neg": [2, 3]}}, "has no key methods.ckd.pos_and_neg"),
    ({"grid": {}, "seeds": [0]}, "the grid is empty"),
    ({"grid": {"optim.lr": []}}, "empty grid axis"),
    ({"grid": {"optim.lr": [-1.0]}}, "optim.lr"),
    ({"storage": "postgresql://user:secret@127.0.0.1:1/kd"}, "cannot be opened"),
])
def test_bad_sweep_input_is_a_one_line_usage_error(tmp_path, capsys, changes, says):
    assert run_cli("sweep", "-c", _sweep(tmp_path, **changes)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert "secret" not in err[0]


def test_a_worker_cannot_join_a_sweep_that_was_not_started(tmp_path, capsys):
    assert run_cli("sweep", "-c", _sweep(tmp_path), "--worker") == 2
    assert "start it with" in capsys.readouterr().err


def test_a_grid_over_method_parameters_and_recipes(tmp_path, digits_teacher):
    recipe = tmp_path / "ckd.yaml"
    recipe.write_text(yaml.safe_dump({"name": "ckd", "dataset": {"name": "digits", "batch_size": 32},
                                      "student": {"arch": "resnet8"}, "teacher": {"checkpoint": str(digits_teacher),
                                                                                  "cache": True},
                                      "loss": {"ckd_cls": 1.0, "ckd_rel": 1.0}}))
    path = _sweep(tmp_path, recipe=str(recipe), grid={"methods.ckd.pos_and_neg": [2, 3]}, seeds=[0])
    assert run_cli("sweep", "-c", path) == 0
    _, trials = _trials(path)
    assert sorted(t.params["methods.ckd.pos_and_neg"] for t in trials) == [2, 3]
    runs = [Path(t.user_attrs["run"]) for t in trials]
    assert all(yaml.safe_load((r / "config.yaml").read_text())["methods"]["ckd"]["pos_and_neg"] in (2, 3)
               for r in runs)


CLAIMER = """
import sys, json
from kdzoo.sweep.config import load_sweep
from kdzoo.sweep.study import claim, join_study, open_storage
cfg = load_sweep(sys.argv[1])
study = join_study(cfg, open_storage(cfg))
got = []
while True:
    trial = claim(study)
    if trial is None:
        break
    got.append(trial)
print(json.dumps(got))
"""


def test_four_processes_claiming_at_once_never_take_the_same_trial(tmp_path):
    path = _sweep(tmp_path, grid={"optim.lr": [0.001 * i for i in range(1, 31)]}, seeds=[0, 1, 2, 3])
    cfg = load_sweep(path)
    enqueue_missing(create_study(cfg, open_storage(cfg)), cfg)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(path)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    claims = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    every = [t for got in claims for t in got]
    assert len(every) == 120 and len(set(every)) == 120


def test_run_folders_of_same_named_recipes_in_different_folders_differ(tmp_path):
    from kdzoo.sweep.study import run_folder

    path = _sweep(tmp_path)
    cfg = load_sweep(path)
    a = run_folder(cfg, {"recipe": "configs/cifar100/ckd/white_box_hint/vgg13-vgg8.yaml", "optim.lr": 0.1, "seed": 1})
    b = run_folder(cfg, {"recipe": "configs/cifar100/ckd/white_box_vid/vgg13-vgg8.yaml", "optim.lr": 0.1, "seed": 1})
    assert a != b and a.name == b.name == "seed1"


@pytest.mark.parametrize("changes, says", [
    ({"grid": {"student.arch": ["resnet8", "resnet9999"]}}, 'grid point {"student.arch": "resnet9999"}: unknown model'),
    ({"grid": {"dataset.name": ["nosuchset"]}}, 'grid point {"dataset.name": "nosuchset"}: unknown dataset'),
    ({"grid": {"loss.nosuch": [1.0]}}, "loss.nosuch: unknown loss term"),
    ({"seeds": [0, -1]}, '"seed": -1}: seed: must be in'),
])
def test_every_grid_point_is_validated_as_a_recipe_before_anything_starts(tmp_path, capsys, changes, says):
    assert run_cli("sweep", "-c", _sweep(tmp_path, **changes)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--report", "--worker"])
def test_a_sweep_not_started_is_reported_as_such_and_nothing_is_created(tmp_path, capsys, flag):
    assert run_cli("sweep", "-c", _sweep(tmp_path), flag) == 2
    err = capsys.readouterr().err.strip()
    assert "sweep tiny has not started (no trials in storage" in err and "before adding workers" not in err
    assert "\n" not in err and not (tmp_path / "out").exists()


def test_sigterm_mid_trial_stops_in_one_line_and_the_same_command_continues(tmp_path, capsys):
    path = _sweep(tmp_path, grid={"epochs": [1, 300]}, seeds=[0])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "kdzoo.cli", "sweep", "-c", str(path)], env=env, stdout=out,
                                stderr=err)
        cfg = load_sweep(path)
        long_run = run_folder(cfg, {"epochs": 300, "seed": 0})
        deadline = time.time() + 240
        while time.time() < deadline and (not (long_run / "metrics.jsonl").is_file() or _epoch_lines(long_run) < 3):
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
        err.seek(0)
        stopped = err.read().strip().splitlines()
    assert stopped == [f"kdzoo: stopped by SIGTERM; run `kdzoo sweep -c {path}` again to continue"], stopped
    short_run = run_folder(cfg, {"epochs": 1, "seed": 0})
    finished = (short_run / "metrics.jsonl").read_text()
    kept = CheckpointStore(long_run / "checkpoints").pointer()["epoch"]  # a later epoch's line is trained again
    first_epochs = (long_run / "metrics.jsonl").read_text().splitlines()[:kept]
    assert 2 <= kept < 300
    _, trials = _trials(path)
    assert sorted((t.state.name, t.user_attrs.get("error")) for t in trials) == [("COMPLETE", None),
                                                                                ("FAIL", "interrupted")]
    assert run_cli("sweep", "-c", path) == 0
    assert "1 to run" in capsys.readouterr().out
    assert (short_run / "metrics.jsonl").read_text() == finished  # the finished trial was not run again
    lines = (long_run / "metrics.jsonl").read_text().splitlines()
    assert lines[:kept] == first_epochs  # resumed, not redone
    assert [json.loads(line)["epoch"] for line in lines if '"at_best"' not in line] == list(range(1, 301))
    _, trials = _trials(path)
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL"]


@pytest.fixture
def read_only():
    """Make files and folders read-only, for root too (chattr +i: root ignores the mode bits); undone after."""
    made = []

    def make(path: Path) -> None:
        path.chmod(0o555 if path.is_dir() else 0o444)
        made.append(path)
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(path)], check=True)
        with pytest.raises(OSError):  # really read-only, or the test would prove nothing
            if path.is_dir():
                (path / "probe").mkdir()
            else:
                open(path, "ab").close()

    yield make
    for path in reversed(made):
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=False)
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_read_only_storage_is_a_one_line_error_naming_it(tmp_path, capsys, read_only):
    path = _sweep(tmp_path, grid={"optim.lr": [0.1]}, seeds=[0])
    cfg = load_sweep(path)
    create_study(cfg, open_storage(cfg))  # started: the storage and its folder exist
    db = cfg.out / "sweep.db"
    for unwritable in (db, cfg.out):
        read_only(unwritable)
        assert run_cli("sweep", "-c", path) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"kdzoo: error: storage {db}: attempt to write a readonly database") and \
            err.count("\n") == 1, err
    nested = _sweep(tmp_path, out=str(cfg.out / "inner"))  # its folder cannot be created
    assert run_cli("sweep", "-c", nested) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kdzoo: error: storage {cfg.out / 'inner' / 'sweep.db'}: cannot create its folder (") \
        and err.count("\n") == 1, err
