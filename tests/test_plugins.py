"""Plugins through the plain `kdzoo` CLI: a package installed in the test (a method, a model and a dataset,
found through the `kdzoo.plugins` entry-point group) trains, evaluates, benches and sweeps; a recipe's
`imports:` reaches every command that reads the run folder; a plugin that fails to import is one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PLUGIN = '''
"""A plugin as a user would write one: a model, a method and a dataset, registered on import."""
import torch.nn.functional as F
from torch import nn

from kdzoo.data.registry import DATASETS, register_dataset
from kdzoo.distillers import Method, register_method
from kdzoo.models import FeatureSpec, Needs
from kdzoo.models.registry import register_model


@register_model("tinynet", "a two-layer CNN from a plugin")
class TinyNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.conv(x))).flatten(1))

    def feature_spec(self):
        return FeatureSpec(stages=("conv",), head="fc")


@register_method
class LogitMSE(Method):
    """Mean squared error between student and teacher logits (a plugin's method)."""

    name = "logit_mse"
    student_needs = Needs(logits=True)
    teacher_needs = Needs(logits=True)

    def losses(self, batch, s, t, step):
        return {"logit_mse": F.mse_loss(s.logits, t.logits)}


register_dataset("plugin_digits", "digits under a plugin's name", DATASETS.get("digits"))
'''


def _install(root: Path, package: str, entry_point: bool) -> None:
    """The package on a path, with its dist-info (what pip writes) when it declares the entry point."""
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text(PLUGIN)
    if entry_point:
        info = root / f"{package}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[kdzoo.plugins]\ntiny = {package}\n")


def _kdzoo(cwd: Path, path: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(REPO / "src")])}
    return subprocess.run([sys.executable, "-m", "kdzoo.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


TINY = ["epochs=1", "dataset.subset.size=200", "engine.progress=false", "engine.tensorboard=false",
        "dataset.eval_batch_size=500"]


def _recipe(folder: Path, name: str, **data) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "dataset": {"name": "plugin_digits"}, **data}))
    return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    _install(root, "kdzoo_tiny_plugin", entry_point=True)
    return root


def test_an_installed_plugin_trains_evaluates_benches_and_sweeps_through_the_plain_cli(installed, tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    _recipe(recipes, "teacher", student={"arch": "tinynet"}, loss={"ce": 1.0})
    _recipe(recipes, "student", student={"arch": "tinynet"}, loss={"ce": 1.0})
    listed = _kdzoo(tmp_path, installed, "list", "methods")
    assert listed.returncode == 0 and "logit_mse" in listed.stdout

    teacher = tmp_path / "teacher"
    done = _kdzoo(tmp_path, installed, "train", "-c", recipes / "teacher.yaml", "--out", teacher, *TINY)
    assert done.returncode == 0, done.stderr
    distil = _recipe(recipes, "logit_mse", student={"arch": "tinynet"}, teacher={"checkpoint": str(teacher)},
                     loss={"ce": 1.0, "logit_mse": 1.0})
    run = tmp_path / "run"
    done = _kdzoo(tmp_path, installed, "distill", "-c", distil, "--out", run, *TINY)
    assert done.returncode == 0, done.stderr
    evaluated = _kdzoo(tmp_path, installed, "eval", "--checkpoint", run, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["arch"] == "tinynet"

    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump({
        "name": "plugin", "out": str(tmp_path / "bench"), "recipes_dir": str(recipes), "teacher": "teacher",
        "baseline": "student", "rows": ["logit_mse"], "students": ["tinynet"], "seeds": [0],
        "overrides": {"epochs": 1, "dataset.subset.size": 200, "engine.tensorboard": False},
        "teacher_overrides": {"epochs": 1, "engine.tensorboard": False}}))
    done = _kdzoo(tmp_path, installed, "bench", "-c", bench)
    assert done.returncode == 0, done.stderr
    rows = {r["row"] for r in json.loads((tmp_path / "bench" / "results.json").read_text())}
    assert rows == {"student", "logit_mse"}

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "plugin", "recipe": str(distil), "grid": {"optim.lr": [0.1, 0.05]}, "seeds": [0],
        "overrides": {"epochs": 1, "dataset.subset.size": 200, "engine.tensorboard": False},
        "out": str(tmp_path / "sweep")}))
    done = _kdzoo(tmp_path, installed, "sweep", "-c", sweep)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "sweep").rglob("summary.json"))) == 2


def test_a_recipes_imports_are_recorded_and_followed_by_eval_of_its_run(tmp_path):
    site = tmp_path / "site"
    _install(site, "my_kd_plugin", entry_point=False)  # no entry point: only the recipe names it
    recipe = _recipe(tmp_path, "plain", imports=["my_kd_plugin"], student={"arch": "tinynet"}, loss={"ce": 1.0})
    run = tmp_path / "run"
    done = _kdzoo(tmp_path, site, "train", "-c", recipe, "--out", run, *TINY)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["imports"] == ["my_kd_plugin"]
    evaluated = _kdzoo(tmp_path, site, "eval", "--checkpoint", run, "--json")  # the checkpoint names the plugin
    assert evaluated.returncode == 0, evaluated.stderr
    without = _kdzoo(tmp_path, site, "eval", "--checkpoint", REPO / "nonexistent")
    assert without.returncode == 2


@pytest.mark.parametrize("body, says", [
    ("raise RuntimeError('no GPU driver')", "plugin broken_plugin failed to import (RuntimeError: no GPU driver)"),
    ("import nosuchmodule_xyz", "plugin broken_plugin failed to import (ModuleNotFoundError"),
])
def test_a_plugin_that_fails_to_import_is_one_line_naming_it(tmp_path, body, says):
    (tmp_path / "broken_plugin").mkdir()
    (tmp_path / "broken_plugin" / "__init__.py").write_text(textwrap.dedent(body))
    recipe = _recipe(tmp_path, "r", imports=["broken_plugin"], student={"arch": "resnet8"}, loss={"ce": 1.0})
    done = _kdzoo(tmp_path, tmp_path, "train", "-c", recipe, "--out", tmp_path / "run", *TINY)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr
    assert not (tmp_path / "run").exists()
    info = tmp_path / "broken_plugin-0.1.dist-info"  # the same package as an entry point: every verb says so
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kdzoo.plugins]\nbroken = broken_plugin\n")
    listed = _kdzoo(tmp_path, tmp_path, "list", "models")
    assert listed.returncode == 2 and "plugin broken (broken_plugin, entry point of broken-plugin)" in listed.stderr
