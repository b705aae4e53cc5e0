"""`kdzoo demo`: three real runs (teacher, student, KD student) and a comparison table; a rerun trains afresh."""
from __future__ import annotations

from kdzoo.demo import run_demo


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
