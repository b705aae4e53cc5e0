"""`kdzoo demo`: three real runs (teacher, student, KD student) and a comparison table; a rerun trains afresh."""
from __future__ import annotations

from kdzoo.demo import run_demo
from tests.conftest import CONFIGS


def test_demo_runs_twice_and_prints_a_table(tmp_path, capsys):
    fast = ["epochs=1", "engine.tensorboard=false"]
    for _ in range(2):  # the second run replaces the first one's folders instead of refusing them
        rows = run_demo(tmp_path, quiet=True, overrides=fast)
        assert [r["model"] for r in rows] == ["teacher", "student", "student + KD"]
        assert [r["arch"] for r in rows] == ["resnet8x4", "resnet8", "resnet8"]
        assert all(0 <= r["best_top1"] <= 100 and r["best_epoch"] == 1 for r in rows)
    out = capsys.readouterr().out
    assert "hardware: " in out and "precision " in out
    table = (tmp_path / "results.md").read_text()
    assert table.count("| resnet8 |") == 2 and "| teacher | resnet8x4 |" in table
    assert (tmp_path / "kd" / "summary.json").is_file()


def test_demo_never_clears_a_run_that_is_not_its_own(tmp_path, capsys):
    from kdzoo.cli import main

    other = tmp_path / "teacher"
    assert main(["train", "-c", str(CONFIGS / "digits" / "student.yaml"), "--out", str(other), "epochs=1",
                 "engine.progress=false", "engine.tensorboard=false"]) == 0
    before = (other / "checkpoints" / "last.safetensors").read_bytes()
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 2
    assert "holds a run that is not the demo's (digits-student)" in capsys.readouterr().err
    assert (other / "checkpoints" / "last.safetensors").read_bytes() == before

