"""The leaderboard and reports end to end on a tiny digits grid; linear CKA properties."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from kdzoo.bench.cka import linear_cka
from kdzoo.bench.runner import Bench
from tests.conftest import CONFIGS, REPO, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(200, 16)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_rotation_and_scale():
    torch.manual_seed(0)
    x = torch.randn(300, 12)
    q, _ = torch.linalg.qr(torch.randn(12, 12))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)
    y = torch.randn(300, 20)
    assert linear_cka(x, y) == pytest.approx(linear_cka(x @ q, y), abs=1e-9)
    assert linear_cka(x, y) < 0.5  # unrelated representations


def test_cka_matches_hand_computation():
    # centred: xc = +-0.5 entries with X^T X = I (norm sqrt 2); yc = (1, -1, 0, 0): Y^T X = (1, -1), Y^T Y = 2
    # CKA = 2 / (sqrt(2) * 2) = 1/sqrt(2)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    y = torch.tensor([[2.0], [0.0], [1.0], [1.0]])
    assert linear_cka(x, y) == pytest.approx(2 ** -0.5, abs=1e-12)


@pytest.fixture
def tiny_bench(tmp_path):
    cfg = {
        "name": "tiny-digits", "out": str(tmp_path / "bench"), "recipes_dir": str(CONFIGS / "digits"),
        "teacher": "teacher", "baseline": "student",
        "rows": ["kd", {"name": "kd_fp32", "recipe": "kd", "overrides": {"engine.precision": "fp32"}}],
        "students": ["resnet8"], "seeds": [0, 1],
        "overrides": {"epochs": 1, "dataset.subset": 200, "engine.tensorboard": False},
        "teacher_overrides": {"epochs": 1, "model.arch": "resnet8x4", "engine.tensorboard": False},
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tmp_path / "bench"


def test_tiny_grid_end_to_end(tiny_bench, capsys, monkeypatch):
    path, out = tiny_bench
    assert run_cli("bench", "-c", path) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 6  # (baseline + 2 rows) x 1 student x 2 seeds
    assert {(r["row"], r["seed"]) for r in results} == {(row, s) for row in ("student", "kd", "kd_fp32") for s in (0, 1)}
    for r in results:
        assert 0 <= r["best_top1"] <= 100 and r["wall_time_s"] > 0 and r["config"]["epochs"] == 1
    assert {r["precision"] for r in results if r["row"] == "kd_fp32"} == {"fp32"}
    board = (out / "leaderboard.md").read_text()
    assert "| rank | method | seeds | best top-1 (mean ± std) | last top-1 (mean ± std) | gain vs student" in board
    assert board.count("| 2 |") >= 2  # two rows with 2 seeds (the rank column also says 2 once)
    kd_runs = [r for r in results if r["row"] == "kd"]
    mean = sum(r["best_top1"] for r in kd_runs) / 2
    assert f"{mean:.2f} ±" in board
    assert f"- Command: `kdzoo bench -c {path}`" in board
    assert "Failed runs" not in board

    # resumable: finished cells are not rerun, a missing one is
    calls = []
    monkeypatch.setattr(Bench, "run_cell", lambda self, cell, folder: calls.append(cell.key))
    assert run_cli("bench", "-c", path) == 0
    assert calls == []
    (out / "runs" / "kd" / "resnet8" / "seed1" / "summary.json").unlink()
    assert run_cli("bench", "-c", path) == 0
    assert calls == ["kd/resnet8/seed1"]
    monkeypatch.undo()
    # the same cell in a worker process (--jobs), as a user with many cores would run the grid
    assert run_cli("bench", "-c", path, "--jobs", "2") == 0
    assert (out / "runs" / "kd" / "resnet8" / "seed1" / "summary.json").is_file()

    # reports: tables, valid PNG plots, CKA for the distilled students
    report = out / "report"
    assert run_cli("report", out / "runs", "--out", report) == 0
    for name in ("accuracy_curves.png", "accuracy_bars.png"):
        data = (report / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 2000
    rows = json.loads((report / "report.json").read_text())
    by_label = {r["label"]: r for r in rows}
    assert by_label["kd (resnet8)"]["cka"] is not None and 0 < by_label["kd (resnet8)"]["cka"][0] <= 1
    assert by_label["student (resnet8)"]["cka"] is None
    assert "linear CKA" in (report / "report.md").read_text()


def test_bench_refuses_a_teacher_from_another_recipe(tiny_bench, capsys):
    path, out = tiny_bench
    assert run_cli("bench", "-c", path, "seeds=[0]", "rows=[]") == 0
    assert run_cli("bench", "-c", path, "seeds=[0]", "rows=[]", "teacher_overrides.epochs=2") == 2
    assert "another recipe" in capsys.readouterr().err


def test_failed_cells_are_listed_not_silently_dropped(tiny_bench):
    from kdzoo.bench.config import load_bench_config
    from kdzoo.bench.leaderboard import format_failures

    path, out = tiny_bench
    bench = Bench(load_bench_config(path))
    assert format_failures(bench) == ""
    folder = bench.run_dir(bench.cells()[3])
    folder.mkdir(parents=True)
    (folder / "failed.txt").write_text("fsp: stage 1 has 16 student channels but 32 teacher channels\nTraceback\n")
    text = format_failures(bench)
    assert text.splitlines()[0] == "### Failed runs (not in the tables)"
    assert f"- {bench.cells()[3].key}: fsp: stage 1 has 16 student channels but 32 teacher channels" in text
    (folder / "summary.json").write_text("{}")  # a later rerun that finished: no longer a failure
    assert format_failures(bench) == ""


# Progress with an ETA, in the terminal and in <out>/bench.log ------------------------------------------------
def test_epoch_progress_prefixes_and_adds_an_eta():
    from kdzoo.bench.progress import EpochProgress

    now = [100.0]
    lines = []
    progress = EpochProgress("kd/resnet8/seed0", lines.append, clock=lambda: now[0])
    for seconds in (10.0, 20.0):  # mean 15 s per epoch so far
        now[0] += seconds
        progress("main epoch {}/10  loss 1.0000  top1 50.00  best 50.00  9.0s".format(len(lines) + 1))
    assert lines[0] == "kd/resnet8/seed0: main epoch 1/10  loss 1.0000  top1 50.00  best 50.00  9.0s  ETA 1m30s"
    assert lines[1].endswith("ETA 2m00s")  # 8 epochs left x 15 s
    now[0] += 3.0
    progress("init:fsp epoch 1/2  loss 1.0")  # a new phase: its own mean, and the ETA says it is the phase's
    assert lines[2].endswith("  loss 1.0  phase ETA 3s")
    progress("something else")
    assert lines[3] == "kd/resnet8/seed0: something else"


def test_duration_format():
    from kdzoo.bench.progress import duration

    assert [duration(s) for s in (0, 12.4, 65, 3599, 3720, 90000)] == ["0s", "12s", "1m05s", "59m59s", "1h02m",
                                                                      "25h00m"]


def test_bench_prints_and_logs_per_epoch_progress(tiny_bench, capsys):
    path, out = tiny_bench
    assert run_cli("bench", "-c", path, "seeds=[0]", "rows=[]", "teacher_overrides.epochs=2",
                   "overrides.epochs=3") == 0
    terminal = capsys.readouterr().out
    log = (out / "bench.log").read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  "
    for label, epochs in (("teacher", 2), ("student/resnet8/seed0", 3)):
        for i in range(1, epochs + 1):
            pattern = rf"{label}: main epoch {i}/{epochs}  loss \S+  top1 \S+  best \S+  \S+s  ETA \d+(m\d\ds|s)$"
            assert any(re.fullmatch(stamp + pattern, line) for line in log), (pattern, log)
            assert re.search(pattern.rstrip("$"), terminal, re.M), terminal
    assert any(re.fullmatch(stamp + r"bench tiny-digits: 1 of 1 cells to run -> .*", line) for line in log)
    assert any(re.fullmatch(stamp + r"\[1/1\] student/resnet8/seed0", line) for line in log)
    assert any(re.fullmatch(stamp + r"teacher: best \S+  last \S+  \S+", line) for line in log)
    # one seed: no fake spread
    board = (out / "leaderboard.md").read_text()
    assert "(1 seed)" in board and "± 0.00" not in board
    row = next(line for line in board.splitlines() if line.startswith("| – | student |"))
    assert re.fullmatch(r"\| – \| student \| 1 \| \d+\.\d\d \(1 seed\) \| \d+\.\d\d \(1 seed\) \| \+0\.00 \| 1\.00x \|",
                        row), row
    # a report over that one run says so too
    assert run_cli("report", out / "runs", "--out", out / "report", "--no-cka") == 0
    report = (out / "report" / "report.md").read_text()
    assert re.search(r"\| student \(resnet8\) \| 1 \| \d+\.\d\d \(1 seed\) \| \d+\.\d\d \(1 seed\) \|  \|", report)
    assert "± 0.00" not in report


def test_bench_checks_every_cell_recipe_before_training_the_teacher(tiny_bench, capsys):
    path, out = tiny_bench
    assert run_cli("bench", "-c", path, "overrides.epochs=0") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdzoo: error: bench cell student/resnet8/seed0 (student.yaml): epochs: must be >= 1")
    assert not (out / "teacher").exists()
    assert run_cli("bench", "-c", path, "seeds=[0, -1]") == 2
    assert capsys.readouterr().err.strip().startswith("kdzoo: error: seeds[1]: must be in [0, 2**63 - 1]")


def test_single_seed_shows_the_seed_count_not_a_zero_std():
    from kdzoo.bench.leaderboard import format_leaderboard, leaderboard_rows, mean_pm

    assert mean_pm((81.0712, 0.0), 1) == "81.07 (1 seed)"
    assert mean_pm((81.0712, 0.617), 3) == "81.07 ± 0.62"
    assert mean_pm((0.51234, 0.0), 1, digits=3) == "0.512 (1 seed)"
    results = [{"row": "student", "student": "resnet8", "seed": 0, "best_top1": 79.0, "last_top1": 78.5,
                "epoch_time_s": 1.0},
               {"row": "kd", "student": "resnet8", "seed": 0, "best_top1": 81.07, "last_top1": 81.0,
                "epoch_time_s": 2.0},
               {"row": "kd", "student": "resnet8", "seed": 1, "best_top1": 82.07, "last_top1": 81.0,
                "epoch_time_s": 2.0},
               {"row": "dkd", "student": "resnet8", "seed": 0, "best_top1": 80.0, "last_top1": 80.0,
                "epoch_time_s": 2.0}]
    text = format_leaderboard(leaderboard_rows(results))
    assert "| – | student | 1 | 79.00 (1 seed) | 78.50 (1 seed) | +0.00 | 1.00x |" in text
    assert "| 1 | kd | 2 | 81.57 ± 0.71 | 81.00 ± 0.00 | +2.57 | 2.00x |" in text  # a real 0 spread of 2 seeds
    assert "| 2 | dkd | 1 | 80.00 (1 seed) | 80.00 (1 seed) | +1.00 | 2.00x |" in text


def test_killed_cell_resumes_a_changed_recipe_restarts_a_busy_one_is_skipped(tiny_bench, capsys):
    from kdzoo.bench.config import load_bench_config
    from kdzoo.checkpoints.run_folder import RunLock
    from kdzoo.checkpoints.store import CheckpointStore

    path, out = tiny_bench
    bench = Bench(load_bench_config(path))
    bench.ensure_teacher()
    cell = bench.cells()[0]
    folder = bench.run_dir(cell)
    assert "best " in bench.run_cell(cell, folder)
    (folder / "summary.json").unlink()  # as if killed after its last checkpoint
    assert "best " in bench.run_cell(cell, folder)  # continued, not restarted: the pointer did not move
    assert CheckpointStore(folder / "checkpoints").pointer()["serial"] == 1
    changed = type(cell)(**{**vars(cell), "overrides": [*cell.overrides, "optim.lr=0.01"]})
    (folder / "summary.json").unlink()
    assert "best " in bench.run_cell(changed, folder)
    assert "its recipe changed since its checkpoint" in capsys.readouterr().out
    assert "lr: 0.01" in (folder / "config.yaml").read_text()
    with RunLock(folder):
        assert bench.run_cell(cell, folder).startswith("skipped: run folder")
    assert not (folder / "failed.txt").exists()


def test_a_changed_budget_reruns_finished_cells(tiny_bench, capsys):
    from kdzoo.bench.config import load_bench_config

    path, out = tiny_bench
    assert run_cli("bench", "-c", path, "seeds=[0]", "rows=[]") == 0
    bench = Bench(load_bench_config(path, ["seeds=[0]", "rows=[]", "overrides.epochs=2"]))
    (cell,) = bench.pending()  # finished at 1 epoch: not finished for a 2-epoch budget
    message = bench.run_cell(cell, bench.run_dir(cell))
    assert message.startswith("best "), message
    assert "its recipe changed since its checkpoint" in capsys.readouterr().out  # cosine: restarted, not resumed
    assert bench.pending() == []


def test_sigterm_stops_a_parallel_bench_and_its_workers(tiny_bench):
    path, out = tiny_bench
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "kdzoo.cli", "bench", "-c", str(path), "--jobs", "2", "seeds=[0,1,2,3]",
           "overrides.epochs=30"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    log = out / "bench.log"
    while time.time() < deadline and not (log.is_file() and "epoch 1/30" in log.read_text()):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the bench did not stop within 90 s of SIGTERM")
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "kdzoo: stopped by SIGTERM" in err
    finished = list((out / "runs").rglob("summary.json"))
    assert len(finished) < 12  # the queued cells were not run



def test_rows_with_their_own_teacher_an_aux_student_or_no_teacher(tmp_path):
    """HSAKD rows: an _aux teacher trained once for them (option 1 from the bench teacher's weights), _aux
    students; a mutual row has no teacher."""
    out = tmp_path / "bench"
    cfg = {
        "name": "tiny-hsakd", "out": str(out), "recipes_dir": str(CONFIGS / "digits"),
        "teacher": "teacher", "baseline": "student",
        "rows": [{"name": "hsakd", "recipe": "hsakd/student", "teacher": "hsakd/teacher", "student_suffix": "_aux",
                  "teacher_overrides": {"epochs": 1, "dataset.subset": 200}},
                 {"name": "hsakd_opt1", "recipe": "hsakd/student", "teacher": "hsakd/teacher_opt1",
                  "student_suffix": "_aux",
                  "teacher_overrides": {"epochs": 1, "dataset.subset": 200, "model.arch": "resnet8x4_aux",
                                        "model.checkpoint": str(out / "teacher")}},
                 {"name": "mutual", "recipe": "mutual/dml", "teacher": "none"}],
        "students": ["resnet8"], "seeds": [0],
        "overrides": {"epochs": 1, "dataset.subset": 200, "engine.tensorboard": False},
        "teacher_overrides": {"epochs": 1, "model.arch": "resnet8x4", "engine.tensorboard": False},
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run_cli("bench", "-c", path) == 0
    results = {r["row"]: r for r in json.loads((out / "results.json").read_text())}
    assert set(results) == {"student", "hsakd", "hsakd_opt1", "mutual"}
    hsakd = results["hsakd"]["config"]
    assert hsakd["student"]["arch"] == "resnet8_aux"
    assert hsakd["teacher"]["checkpoint"] == str(out / "teachers" / "hsakd" / "teacher")
    assert results["mutual"]["config"]["teacher"]["checkpoint"] is None
    saved = yaml.safe_load((out / "teachers" / "hsakd" / "teacher_opt1" / "config.yaml").read_text())
    assert saved["student"]["checkpoint"] == str(out / "teacher") and saved["student"]["freeze"] == ["backbone"]
    board = (out / "leaderboard.md").read_text()
    assert "- Teacher of hsakd: resnet8x4_aux (hsakd/teacher, 1 epoch)" in board
    assert "- Teacher of hsakd_opt1: resnet8x4_aux (hsakd/teacher_opt1, 1 epoch)" in board


def test_rows_naming_one_teacher_with_other_overrides_are_refused(tmp_path):
    from kdzoo.bench.config import load_bench_config
    from kdzoo.errors import KdzooError

    rows = [{"name": f"r{i}", "recipe": "hsakd/student", "teacher": "hsakd/teacher",
             "teacher_overrides": {"epochs": i + 1}} for i in range(2)]
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "out": str(tmp_path / "b"), "recipes_dir": str(CONFIGS / "digits"),
                                    "teacher": "teacher", "baseline": "student", "rows": rows,
                                    "students": ["resnet8"], "seeds": [0]}))
    bench = Bench(load_bench_config(path))
    with pytest.raises(KdzooError, match="other teacher_overrides"):
        bench.teachers()
    assert [label for label, _, _ in bench.teachers(only={"r1"})] == ["hsakd/teacher"]  # --only r1
    same = Bench(load_bench_config(path, ["rows=[{name: a, recipe: kd, teacher: teacher}]"]))
    assert same.teacher_dir(same.cfg.rows[0]) == same.teacher_dir() and len(same.teachers()) == 1


def test_only_rows_that_need_the_bench_teacher_train_it(tmp_path):
    """`--only` trains the bench teacher just for rows that distil from it or whose own teacher starts from it
    (an option-1 HSAKD teacher), not for a from-scratch teacher's row or a row without a teacher."""
    from kdzoo.bench.config import load_bench_config

    out = tmp_path / "b"
    rows = [{"name": "scratch", "recipe": "hsakd/student", "teacher": "hsakd/teacher"},
            {"name": "opt1", "recipe": "hsakd/student", "teacher": "hsakd/teacher_opt1",
             "teacher_overrides": {"model.checkpoint": str(out / "teacher" / "checkpoints" / "best.safetensors")}},
            {"name": "mutual", "recipe": "mutual/dml", "teacher": "none"},
            {"name": "kd", "recipe": "kd"}]
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "out": str(out), "recipes_dir": str(CONFIGS / "digits"),
                                    "teacher": "teacher", "baseline": "student", "rows": rows,
                                    "students": ["resnet8"], "seeds": [0]}))
    bench = Bench(load_bench_config(path))

    def labels(only):
        return [label for label, _, _ in bench.teachers(only=only)]

    assert labels({"scratch"}) == ["hsakd/teacher"]
    assert labels({"mutual"}) == []
    assert labels({"opt1"}) == ["teacher", "hsakd/teacher_opt1"]
    assert labels({"kd"}) == ["teacher"]
    assert labels({"scratch", "kd"}) == ["teacher", "hsakd/teacher"]
    assert labels(None) == ["teacher", "hsakd/teacher", "hsakd/teacher_opt1"]
    from kdzoo.bench.leaderboard import write_leaderboard

    out.mkdir()
    text = write_leaderboard(bench, [])  # e.g. after `--only scratch`: no bench teacher in the folder
    assert "- Teacher: not trained in this folder" in text and "None CPU cores" not in text


def test_a_row_timed_on_another_machine_gets_no_time_ratio():
    """Merged rows keep their accuracy, but their epoch time is not divided by another machine's baseline."""
    from kdzoo.bench.leaderboard import (
        _other_machines,
        format_leaderboard,
        leaderboard_rows,
    )

    def run(row, seed, seconds, hardware=None):
        return {"row": row, "student": "resnet8", "seed": seed, "best_top1": 80.0 + seed, "last_top1": 80.0,
                "epoch_time_s": seconds, "hardware": hardware}

    amd, intel = "AMD EPYC 9R14", "Intel(R) Xeon(R) Processor"
    results = [run("student", 0, 2.0, amd), run("student", 1, 2.0, amd), run("kd", 0, 4.0, amd),
               run("kd", 1, 5.0, amd), run("hsakd", 0, 30.0, intel), run("hsakd", 1, 30.0, intel)]
    rows = leaderboard_rows(results)
    text = format_leaderboard(rows)
    assert "| kd | 2 | 80.50 ± 0.71 | 80.00 ± 0.00 | +0.00 | 2.25x |" in text
    assert "| hsakd | 2 | 80.50 ± 0.71 | 80.00 ± 0.00 | +0.00 |  |" in text
    assert _other_machines(rows) == ["- Rows timed on another machine than the baseline (time/epoch left blank): "
                                     f"hsakd ({intel})."]
    assert _other_machines(leaderboard_rows(results[:4])) == []
    for r in results[:4]:  # runs from before machines were recorded are taken to be the baseline's machine
        r["hardware"] = None
    assert "| hsakd | 2 | 80.50 ± 0.71 | 80.00 ± 0.00 | +0.00 | 15.00x |" in format_leaderboard(leaderboard_rows(results))
