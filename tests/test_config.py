"""Recipes: validation into typed objects, dotted overrides, one-line errors with exit code 2."""
from __future__ import annotations

import pytest

from kdzoo.config import load_config
from kdzoo.errors import ConfigError
from tests.conftest import CONFIGS, run_cli


def test_overrides_apply_with_types():
    cfg = load_config(CONFIGS / "digits" / "kd.yaml", ["optim.lr=0.01", "seed=3", "loss.kd=0.5",
                                                       "schedule.milestones=[2, 4]", "optim.nesterov=true"])
    assert cfg.optim.lr == 0.01 and cfg.seed == 3
    assert cfg.loss == {"ce": 0.1, "kd": 0.5}
    assert cfg.schedule.milestones == [2, 4]
    assert cfg.optim.nesterov is True
    assert cfg.student.arch == "resnet8" and cfg.dataset.name == "digits"


def test_model_key_is_an_alias_of_student():
    cfg = load_config(CONFIGS / "digits" / "teacher.yaml")
    assert cfg.student.arch == "resnet32x4"


@pytest.mark.parametrize("override, expected", [
    ("optim.lrr=0.1", "optim.lrr: unknown key"),
    ("optim.lr=fast", "optim.lr: expected a number"),
    ("epochs=2.5", "epochs: expected an integer"),
    ("engine.precision=fp8", "engine.precision: must be one of"),
    ("dataset=3", "dataset: expected a mapping"),
    ("schedule.milestones=[1, x]", "schedule.milestones[1]: expected an integer"),
    ("noequals", "expected key=value"),
])
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_config(CONFIGS / "digits" / "kd.yaml", [override])


def test_yaml_float_strings_are_numbers():
    cfg = load_config(None, ["optim.weight_decay=5e-4"])
    assert cfg.optim.weight_decay == pytest.approx(5e-4)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdzoo: error: ")
    assert "\n" not in err and "Traceback" not in err
    return err


def test_cli_unknown_key_exits_2(capsys, tmp_path):
    assert run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", tmp_path / "r", "optim.lrr=1") == 2
    assert "optim.lrr" in _one_line_error(capsys)


def test_cli_missing_config_exits_2(capsys, tmp_path):
    assert run_cli("train", "-c", tmp_path / "nope.yaml") == 2
    assert "nope.yaml" in _one_line_error(capsys)


def test_cli_malformed_yaml_exits_2(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nloss: {ce: 1\n")
    assert run_cli("train", "-c", bad) == 2
    assert "malformed YAML" in _one_line_error(capsys)


def test_cli_unknown_model_exits_2(capsys, tmp_path):
    assert run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", tmp_path / "r",
                   "student.arch=resnet9000") == 2
    assert "unknown model 'resnet9000'" in _one_line_error(capsys)


def test_cli_unknown_method_exits_2(capsys, tmp_path):
    assert run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", tmp_path / "r",
                   "loss.telepathy=1") == 2
    assert "loss.telepathy: unknown loss term" in _one_line_error(capsys)


def test_cli_unknown_dataset_exits_2(capsys, tmp_path):
    assert run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", tmp_path / "r",
                   "dataset.name=mnist9") == 2
    assert "unknown dataset 'mnist9'" in _one_line_error(capsys)


def test_cli_list_prints_one_name_per_line(capsys):
    for what, expected in (("models", "resnet8x4"), ("datasets", "fashion_mnist"), ("methods", "kd")):
        assert run_cli("list", what) == 0
        names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
        assert expected in names and len(names) == len(set(names))


def test_overrides_reach_namespaced_method_instances():
    from kdzoo.config.load import apply_overrides

    data = {"loss": {"weak.crd": 0.8}, "methods": {"weak.crd": {"nce_k": 512}, "kd": {"T": 4}}}
    got = apply_overrides(data, ["methods.weak.crd.nce_k=64", "loss.weak.crd=0.5", "loss.peer1.kd=1",
                                 "methods.peer1.kd.T=2", "methods.kd.T=3"])
    assert got["methods"] == {"weak.crd": {"nce_k": 64}, "kd": {"T": 3}, "peer1.kd": {"T": 2}}
    assert got["loss"] == {"weak.crd": 0.5, "peer1.kd": 1}
