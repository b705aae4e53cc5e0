"""The leaderboard and reports end to end on a tiny digits grid; linear CKA properties."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from kdzoo.bench.cka import linear_cka
from kdzoo.bench.runner import Bench
from tests.conftest import CONFIGS, run_cli

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
