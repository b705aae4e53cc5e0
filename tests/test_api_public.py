"""The public face exported from `kdzoo`: names load lazily (`import kdzoo` stays light), each is documented,
`kdzoo.losses` holds the pure losses, `kdzoo.load_model` and `kdzoo.run` do what the CLI does."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

import kdzoo
from kdzoo.errors import KdzooError
from tests.conftest import CONFIGS, REPO
from tests.method_harness import teacher_file


def test_import_kdzoo_does_not_import_torch():
    code = "import sys, kdzoo; print('torch' in sys.modules, kdzoo.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO / "src")})
    assert done.stdout.split()[0] == "False", done.stderr


@pytest.mark.parametrize("name", sorted(set(kdzoo.__all__) - {"__version__"}))
def test_every_exported_name_resolves_and_is_documented(name):
    value = getattr(kdzoo, name)
    assert inspect.getdoc(value) and len(inspect.getdoc(value)) > 40, name
    assert name in dir(kdzoo)


def test_help_of_the_distiller_documents_its_loop():
    text = inspect.getdoc(kdzoo.Distiller)
    for word in ("trainable_parameters", "start_epoch", "after_step", "example", "refused"):
        assert word in text


def test_every_pure_loss_is_callable_with_its_math_in_the_docstring():
    for name in kdzoo.losses.__all__:
        function = getattr(kdzoo.losses, name)
        assert callable(function) and len(inspect.getdoc(function) or "") > 30, name


def test_simkd_and_srrl_losses_by_hand():
    projected, target = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 2.0], [3.0, 2.0]])
    assert kdzoo.losses.simkd_loss(projected, target).item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    h, pooled = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    pred, logits = torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    assert kdzoo.losses.srrl_loss(h, pooled, pred, logits).item() == pytest.approx(0.5 + 4 / 3)


def test_load_model_gives_the_network_in_eval_mode_with_its_metadata(tmp_path):
    path = teacher_file(tmp_path, "resnet8", num_classes=10, in_channels=1)
    model = kdzoo.load_model(path)
    assert not model.training and model.kdzoo_meta["arch"] == "resnet8"
    reference = kdzoo.create_model("resnet8", num_classes=10, in_channels=1)
    torch.manual_seed(0)
    reference = kdzoo.create_model("resnet8", num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(x), reference(x))
    with pytest.raises(KdzooError, match="not found"):
        kdzoo.load_model(tmp_path / "missing")


def test_run_trains_a_recipe_refuses_an_existing_folder_and_resumes(tmp_path):
    tiny = {"epochs": 1, "dataset.subset.size": 120, "engine.progress": False, "engine.tensorboard": False}
    result = kdzoo.run(CONFIGS / "digits" / "student.yaml", out=tmp_path / "run", overrides=tiny)
    assert result.best.is_file() and result.last.is_file()
    assert result.summary["selected_by"] == "test_top1" and len(result.metrics) >= 1
    assert str(result).startswith(str(tmp_path / "run")) and "best test_top1" in str(result)
    with pytest.raises(KdzooError, match="already holds a run.*another out= .or resume=True"):
        kdzoo.run(CONFIGS / "digits" / "student.yaml", out=tmp_path / "run", overrides=tiny)
    again = kdzoo.run(CONFIGS / "digits" / "student.yaml", out=tmp_path / "run", resume=True)
    assert again.summary["best_value"] == result.summary["best_value"]
    assert kdzoo.list_methods() and "kd" in kdzoo.list_methods() and "digits" in kdzoo.list_datasets()
    assert "offline" in kdzoo.list_regimes() and "resnet8" in kdzoo.list_models()
