"""`engine.eval_start` (i-Mix's --start-eval, `kdzoo linear-eval --start-eval N`): no evaluation in a phase's first
N epochs, always one at its last; the best checkpoint is chosen among the evaluated epochs only."""
from __future__ import annotations

import json

import pytest

from kdzoo.checkpoints.format import read_meta
from tests.conftest import CONFIGS, FAST, run_cli

TINY = ["dataset.subset=120", "dataset.batch_size=40", *FAST]


def _evaluated(run, key="test_top1") -> list[int]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in lines if key in r and not r.get("at_best")]


def _best_epoch(run) -> int:
    summary = json.loads((run / "summary.json").read_text())
    assert read_meta(run / "checkpoints" / "best.safetensors")["epoch"] == summary["best_epoch"]
    return summary["best_epoch"]


@pytest.mark.parametrize("start, every, evaluated", [(0, 1, [1, 2, 3, 4, 5]), (3, 1, [4, 5]), (1, 2, [2, 4, 5]),
                                                     (9, 1, [5])])
def test_training_evaluates_from_eval_start_on_and_at_the_last_epoch(tmp_path, start, every, evaluated):
    run = tmp_path / "run"
    assert run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", run, "epochs=5", *TINY,
                   f"engine.eval_start={start}", f"engine.eval_every={every}") == 0
    assert _evaluated(run) == evaluated
    assert _best_epoch(run) in evaluated


def test_linear_eval_start_eval(tmp_path, digits_teacher):
    run = tmp_path / "probe"
    assert run_cli("linear-eval", "--checkpoint", digits_teacher, "--epochs", "4", "--start-eval", "2",
                   "--no-augment", "--out", run, *FAST) == 0
    assert _evaluated(run) == [3, 4]  # 0-based epochs 2 and 3, as i-Mix's `epoch >= args.start_eval`
    assert _best_epoch(run) in (3, 4)


@pytest.mark.parametrize("args, message", [
    (["--start-eval", "-1"], "--start-eval: '-1': give a whole number of epochs >= 0"),
    (["--start-eval", "two"], "--start-eval: 'two': give a whole number of epochs >= 0"),
    (["engine.eval_start=-1"], "engine.eval_start: must be >= 0, got -1"),
    (["engine.eval_start=1.5"], "engine.eval_start: expected an integer"),
])
def test_a_bad_start_is_a_one_line_error(tmp_path, digits_teacher, capsys, args, message):
    run = tmp_path / "probe"
    assert run_cli("linear-eval", "--checkpoint", digits_teacher, "--epochs", "2", "--out", run, *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kdzoo: error: {message}") and "\n" not in err, err
    assert not run.exists()
