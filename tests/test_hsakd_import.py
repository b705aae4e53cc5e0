"""HSAKD's own checkpoints import into kdzoo's `_aux` models: for every HSAKD `_aux` model, a `{'net': ...}` file
with HSAKD's key layout (names and order) and seeded weights is imported, and kdzoo's backbone and head logits
equal what HSAKD's code computes on the same weights and inputs (tests/fixtures/make_hsakd_reference.py ran it
once); then test_model.py's workflow (`import-checkpoint` + `eval --heads`) runs on such a file."""
from __future__ import annotations

import json

import pytest
import torch

from kdzoo.checkpoints.import_hsakd import hsakd_to_kdzoo, kdzoo_arch
from kdzoo.checkpoints.load import load_model
from kdzoo.models import create_model
from tests.conftest import run_cli
from tests.fixtures.hsakd_reference import (
    ARCHS,
    deterministic_state,
    inputs,
    load_reference,
    summary,
)
from tests.test_data import write_cifar100

REFERENCE = load_reference()


def hsakd_file(tmp_path, arch: str, wrap=lambda state: {"net": state, "acc": 70.0, "epoch": 239}):
    """A file as HSAKD's scripts save it (`{'net': state_dict, 'acc', 'epoch', ...}`), with seeded weights."""
    state = deterministic_state(REFERENCE[arch]["layout"])
    path = tmp_path / f"{arch}.pth.tar"
    torch.save(wrap(state), path)
    return path


@pytest.mark.parametrize("arch", list(ARCHS))
def test_hsakd_weights_renamed_give_hsakds_logits(arch):
    classes, side = ARCHS[arch]
    model = create_model(kdzoo_arch(arch), num_classes=classes)
    state = deterministic_state(REFERENCE[arch]["layout"])
    model.load_state_dict(hsakd_to_kdzoo(state, model.state_dict(), arch), strict=True)
    with torch.no_grad():
        logits, heads = model.eval().forward_with_heads(inputs(side))
    expected = REFERENCE[arch]
    assert summary(logits) == pytest.approx(expected["logits"], rel=1e-4, abs=1e-4)
    assert len(heads) == len(expected["heads"])
    for ours, theirs in zip(heads, expected["heads"]):
        assert summary(ours) == pytest.approx(theirs, rel=1e-4, abs=1e-4)


def test_hsakd_names_map_to_kdzoos():
    assert kdzoo_arch("mobilenetV2_aux") == "MobileNetV2_hsakd_aux"
    assert kdzoo_arch("vgg13_bn_aux") == "vgg13_aux" and kdzoo_arch("resnet34_imagenet_aux") == "tv:resnet34_aux"
    assert kdzoo_arch("wrn_40_2_aux") == "wrn_40_2_aux" and kdzoo_arch("mobilenetV2") == "MobileNetV2_hsakd"


def test_an_online_kd_file_needs_its_peer(tmp_path, capsys):
    state = deterministic_state(REFERENCE["resnet20_aux"]["layout"])
    pair = {"net": {**{f"net1.{k}": v for k, v in state.items()}, **{f"net2.{k}": v + 1 for k, v in state.items()}}}
    path = tmp_path / "resnet20_resnet20.pth.tar"
    torch.save(pair, path)
    args = ["import-checkpoint", path, "--arch", "resnet20_aux", "--num-classes", "100", "--dataset", "cifar100"]
    assert run_cli(*args, "--out", tmp_path / "none") == 2
    assert "choose one with --peer {1,2}" in capsys.readouterr().err
    assert run_cli(*args, "--peer", "2", "--out", tmp_path / "two") == 0
    model, _, _ = load_model(tmp_path / "two")
    got = model.state_dict()["backbone.conv1.weight"]
    assert torch.equal(got, state["backbone.conv1.weight"] + 1)


def test_a_file_of_another_arch_names_the_tensor(tmp_path, capsys):
    path = hsakd_file(tmp_path, "wrn_16_2_aux")
    code = run_cli("import-checkpoint", path, "--arch", "wrn_40_1_aux", "--num-classes", "100", "--dataset",
                   "cifar100", "--out", tmp_path / "r")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "another arch" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("arch", ["mobilenetV2_aux", "wrn_16_2_aux"])
def test_test_model_workflow_import_then_eval_heads(tmp_path, capsys, arch):
    """HSAKD's test_model.py: released weights (HSAKD's arch name, DataParallel's module. prefix), then the
    backbone's and each head's accuracy on the test set; the imported logits are HSAKD's."""
    write_cifar100(tmp_path / "data", n_train=4, n_test=6)
    path = hsakd_file(tmp_path, arch, wrap=lambda state: {"net": {f"module.{k}": v for k, v in state.items()}})
    run = tmp_path / "imported"
    assert run_cli("import-checkpoint", path, "--arch", arch, "--num-classes", "100", "--dataset", "cifar100",
                   "--out", run) == 0
    model, meta, _ = load_model(run)
    with torch.no_grad():
        assert summary(model.eval()(inputs(32))) == pytest.approx(REFERENCE[arch]["logits"], rel=1e-4, abs=1e-4)
    capsys.readouterr()
    assert run_cli("eval", "--checkpoint", run, "--data-root", tmp_path / "data", "--json", "--heads") == 0
    result = json.loads(capsys.readouterr().out)
    heads = len(REFERENCE[arch]["heads"])
    assert result["arch"] == kdzoo_arch(arch) and {"top1", *(f"head{i}_top1" for i in range(1, heads + 1))} <= set(result)
