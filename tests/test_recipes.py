"""Every committed recipe validates, and the generated ones equal what configs/make_recipes.py writes."""
from __future__ import annotations

import importlib.util

import pytest

from kdzoo.config import load_config
from kdzoo.distillers import method_for_term
from kdzoo.models import check_model_name
from tests.conftest import CONFIGS

RECIPES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in ("bench", "sweeps"))
SWEEPS = sorted(CONFIGS.rglob("sweeps/*.yaml"))
BENCHES = sorted((CONFIGS / "bench").glob("*.yaml"))


def _generator():
    spec = importlib.util.spec_from_file_location("make_recipes", CONFIGS / "make_recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_validates(path):
    cfg = load_config(path)
    if cfg.student.arch or cfg.regime != "linear_probe":  # a probe takes its arch from the checkpoint
        check_model_name(cfg.student.arch)
    for term in cfg.loss:
        method_for_term(term)


@pytest.mark.parametrize("path", BENCHES, ids=lambda p: p.name)
def test_bench_recipe_validates_and_names_existing_recipes(path):
    from kdzoo.bench.config import load_bench_config
    from kdzoo.bench.runner import Bench

    bench = Bench(load_bench_config(path), root=CONFIGS.parent)
    cells = bench.cells()  # resolves every row's recipe file
    assert len(cells) == (len(bench.cfg.rows) + 1) * len(bench.cfg.students) * len(bench.cfg.seeds)
    for cell in cells[:: len(bench.cfg.seeds)]:
        load_config(cell.recipe, cell.overrides)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_sweep_file_validates_every_grid_value(path, monkeypatch):
    from kdzoo.sweep.config import load_sweep

    monkeypatch.chdir(CONFIGS.parent)  # sweep files name recipes from the repository root
    cfg = load_sweep(path)
    assert len(cfg.trials()) == len(cfg.points()) * len(cfg.seeds) > 1


def test_generated_recipes_are_up_to_date(tmp_path):
    written = _generator().write_all(tmp_path)
    assert written
    for path in written:
        committed = CONFIGS / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} missing: run python configs/make_recipes.py"
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run configs/make_recipes.py"


def test_cifar_recipes_follow_the_published_schedule():
    cfg = load_config(CONFIGS / "cifar100" / "kd" / "resnet32x4-ShuffleV1.yaml")
    assert cfg.epochs == 240 and cfg.schedule.milestones == [150, 180, 210] and cfg.optim.lr == 0.01
    assert cfg.loss == {"ce": 0.1, "kd": 0.9} and cfg.dataset.batch_size == 64
    teacher = load_config(CONFIGS / "cifar100" / "teachers" / "resnet32x4.yaml")
    assert teacher.student.arch == "resnet32x4" and teacher.optim.lr == 0.05
