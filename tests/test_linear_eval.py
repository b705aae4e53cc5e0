"""`kdzoo linear-eval` and the linear_probe regime: the encoder stays bit-identical, the new classifier starts as
the protocol says, features are computed once without augmentation, the i-Mix protocol's defaults, transfer
probes resized to the encoder's input, and the one-line errors."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

import kdzoo.engine.loop as loop
from kdzoo.checkpoints.format import save_weights
from kdzoo.checkpoints.store import CheckpointStore
from kdzoo.config import config_from_data
from kdzoo.engine.trainer import make_engine
from kdzoo.linear_eval import encoder_file, probe_recipe
from kdzoo.models import create_model
from tests.conftest import CONFIGS, FAST, run_cli
from tests.method_harness import teacher_file
from tests.test_data import write_stl10, write_tiny_imagenet_tree


def _args(**kw):
    base = dict(dataset=None, data_root=None, epochs=100, batch_size=None, lr=None, no_augment=False, seed=0,
                protocol="imix")
    return argparse.Namespace(**{**base, **kw})


def test_protocol_defaults(digits_teacher):
    recipe = probe_recipe(encoder_file(str(digits_teacher), "student"), _args())
    assert recipe["optim"] == {"name": "sgd", "lr": 10.0, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}
    assert recipe["schedule"] == {"name": "multistep", "milestones": [80, 90, 95], "gamma": 0.2}
    assert recipe["epochs"] == 100 and recipe["dataset"]["batch_size"] == 256 and recipe["dataset"]["augment"]
    hsakd = probe_recipe(encoder_file(str(digits_teacher), "student"), _args(protocol="hsakd"))
    assert hsakd["optim"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0}
    assert hsakd["schedule"] == {"name": "multistep", "milestones": [30, 60, 90], "gamma": 0.1}
    assert hsakd["dataset"]["batch_size"] == 64
    assert recipe["loss"] == {"ce": 1.0} and recipe["regime"] == "linear_probe"


def test_encoder_stays_bit_identical_and_the_head_is_new(tmp_path, digits_teacher):
    out = tmp_path / "probe"
    assert run_cli("linear-eval", "--checkpoint", digits_teacher, "--epochs", "2", "--batch-size", "64", "--out", out,
                   *FAST) == 0
    encoder = load_file(str(digits_teacher / "checkpoints" / "best.safetensors"))
    probed = load_file(str(out / "checkpoints" / "last.safetensors"))
    assert probed.keys() == encoder.keys()
    body = [k for k in encoder if not k.startswith("fc.")]
    assert body and all(torch.equal(encoder[k], probed[k]) for k in body)  # BN statistics included
    assert not torch.equal(encoder["fc.weight"], probed["fc.weight"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_top1"] >= summary["last_top1"] > 10
    assert run_cli("eval", "--checkpoint", out) == 0  # an ordinary checkpoint of the encoder's arch


def test_new_classifier_is_normal_0_01_and_features_are_computed_once(tmp_path, digits_teacher):
    recipe = probe_recipe(encoder_file(str(digits_teacher), "student"), _args(no_augment=True, epochs=2))
    cfg = config_from_data({**recipe, "engine": {"progress": False, "tensorboard": False}})
    engine = make_engine(cfg, tmp_path / "run", quiet=True)
    program = engine.program
    linear = program.models["student"].module.fc
    assert abs(float(linear.weight.detach().std()) - 0.01) < 0.003 and not linear.bias.any()
    train = program.data["train"].dataset
    assert type(train).__name__ == "InMemoryVectorDataset" and train.features.shape == (len(train), 256)
    trainable = [p for p in program.phases[0].params]
    assert trainable == list(linear.parameters())
    engine.close()


def test_aux_and_teacher_artifacts_probe(tmp_path):
    aux = teacher_file(tmp_path, "resnet8_aux", num_classes=10, in_channels=1)
    out = tmp_path / "aux"
    assert run_cli("linear-eval", "--checkpoint", aux, "--dataset", "digits", "--epochs", "1", "--no-augment",
                   "--out", out, *FAST) == 0
    assert json.loads((out / "summary.json").read_text())["best_top1"] > 0


def test_transfer_probe_resizes_to_the_encoders_input(tmp_path):
    write_stl10(tmp_path / "data", n_train=6, n_test=4)
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=100, in_channels=3)
    file = tmp_path / "cifar_student.safetensors"
    save_weights(file, model.state_dict(), {"arch": "resnet8", "num_classes": 100, "in_channels": 3,
                                            "dataset": "cifar100", "input_shape": [3, 32, 32]})
    recipe = probe_recipe(file, _args(dataset="stl10", data_root=str(tmp_path / "data")))
    assert recipe["dataset"]["image_size"] == 32
    out = tmp_path / "stl"
    assert run_cli("linear-eval", "--checkpoint", file, "--dataset", "stl10", "--data-root", tmp_path / "data",
                   "--epochs", "1", "--batch-size", "4", "--out", out, *FAST) == 0
    probed = load_file(str(out / "checkpoints" / "last.safetensors"))
    assert probed["fc.weight"].shape == (10, 64)


def test_tinyimagenet_probe_reads_the_val_annotations(tmp_path):
    write_tiny_imagenet_tree(tmp_path / "tiny")
    model = create_model("resnet8", num_classes=100, in_channels=3)
    file = tmp_path / "cifar_student.safetensors"
    save_weights(file, model.state_dict(), {"arch": "resnet8", "num_classes": 100, "in_channels": 3,
                                            "dataset": "cifar100", "input_shape": [3, 32, 32]})
    out = tmp_path / "tiny_probe"
    assert run_cli("linear-eval", "--checkpoint", file, "--dataset", "tinyimagenet", "--data-root", tmp_path / "tiny",
                   "--protocol", "hsakd", "--epochs", "1", "--batch-size", "2", "--out", out, *FAST) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "test_top1" in record


@pytest.mark.parametrize("extra, message", [
    (["--network", "peer"], "saved no peer network"),
    (["--dataset", "stl10", "--data-root", "NOWHERE"], "stl10"),
    (["--dataset", "cifar10", "--data-root", "NOWHERE"], "cifar10")])
def test_bad_input_exits_2_in_one_line(tmp_path, digits_teacher, capsys, extra, message):
    code = run_cli("linear-eval", "--checkpoint", digits_teacher, "--epochs", "1", "--out", tmp_path / "r", *extra,
                   *FAST)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_channel_mismatch_is_refused(tmp_path, capsys):
    write_stl10(tmp_path / "data")
    gray = teacher_file(tmp_path, "resnet8", num_classes=10, in_channels=1)
    code = run_cli("linear-eval", "--checkpoint", gray, "--dataset", "stl10", "--data-root", tmp_path / "data",
                   "--epochs", "1", "--out", tmp_path / "r", *FAST)
    assert code == 2 and "1-channel" in capsys.readouterr().err


def _cifar_student(tmp_path, arch: str):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=100, in_channels=3)
    file = tmp_path / f"{arch}.safetensors"
    save_weights(file, model.state_dict(), {"arch": arch, "num_classes": 100, "in_channels": 3,
                                            "dataset": "cifar100", "input_shape": [3, 32, 32]})
    return file, model.state_dict()


def test_an_aux_student_transfers_as_its_backbone(tmp_path):
    """HSAKD's eval_rep.py: a CIFAR-100 `_aux` student probed on STL-10 (10 classes) through its backbone; the
    rotation heads (4 x 100 wide) are dropped, the deployed probe is the plain arch."""
    write_stl10(tmp_path / "data", n_train=6, n_test=4)
    file, state = _cifar_student(tmp_path, "resnet8_aux")
    out = tmp_path / "stl"
    assert run_cli("linear-eval", "--checkpoint", file, "--dataset", "stl10", "--data-root", tmp_path / "data",
                   "--protocol", "hsakd", "--epochs", "1", "--batch-size", "4", "--out", out, *FAST) == 0
    probed = load_file(str(out / "checkpoints" / "last.safetensors"))
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    assert probed.keys() == backbone.keys() and probed["fc.weight"].shape == (10, 64)
    assert all(torch.equal(backbone[k], probed[k]) for k in backbone if not k.startswith("fc."))
    assert json.loads((out / "model.json").read_text())["encoder"] == "resnet8"


@pytest.mark.parametrize("recipe, writer", [("stl10", "stl10"), ("tinyimagenet", "tiny")])
def test_the_shipped_transfer_recipes_probe_an_aux_student(tmp_path, recipe, writer):
    if writer == "stl10":
        write_stl10(tmp_path / "data", n_train=6, n_test=4)
        root = tmp_path / "data"
    else:
        write_tiny_imagenet_tree(tmp_path / "tiny")
        root = tmp_path / "tiny"
    file, _ = _cifar_student(tmp_path, "wrn_16_2_aux")
    out = tmp_path / "probe"
    assert run_cli("train", "-c", CONFIGS / "cifar100" / "linear_eval" / f"{recipe}.yaml", "--out", out,
                   f"student.checkpoint={file}", f"dataset.root={root}", "dataset.download=false", "epochs=1",
                   "dataset.batch_size=4", *FAST) == 0
    assert "test_top1" in json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


def test_an_encoder_that_does_not_fit_names_the_tensor(tmp_path, capsys):
    file = teacher_file(tmp_path, "resnet8", num_classes=10, in_channels=1)
    state = load_file(str(file))
    state["layer2.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    del state["layer3.0.bn1.running_mean"]
    save_weights(file, state, {"arch": "resnet8", "num_classes": 10, "in_channels": 1, "dataset": "digits"})
    code = run_cli("linear-eval", "--checkpoint", file, "--epochs", "1", "--out", tmp_path / "r", *FAST)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "layer2.0.conv1.weight: (3, 3, 3, 3) in the checkpoint" in err and "layer3.0.bn1.running_mean" in err


def _weights(run):
    return {which: load_file(str(run / "checkpoints" / f"{which}.safetensors")) for which in ("last", "best")}


def test_an_interrupted_linear_eval_resumes_exactly(tmp_path, digits_teacher, monkeypatch, capsys):
    probe = ["--checkpoint", digits_teacher, "--epochs", "3", "--batch-size", "64", "--seed", "3"]
    assert run_cli("linear-eval", *probe, "--out", tmp_path / "whole", *FAST) == 0
    steps, real_step = [], loop.train_step

    def step_then_ctrl_c(*args, **kwargs):  # Ctrl-C in the middle of the second epoch
        steps.append(1)
        if len(steps) == 35:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "train_step", step_then_ctrl_c)
        assert run_cli("linear-eval", *probe, "--out", tmp_path / "cut", *FAST) == 130
    assert CheckpointStore(tmp_path / "cut" / "checkpoints").pointer()["epoch"] == 1
    assert run_cli("linear-eval", *probe, "--out", tmp_path / "cut", *FAST) == 2  # a rerun is refused...
    assert "already holds a run" in capsys.readouterr().err
    assert run_cli("linear-eval", "--resume", tmp_path / "cut", *FAST) == 0  # ...--resume continues it
    whole, resumed = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    for which in whole:
        assert all(torch.equal(whole[which][k], resumed[which][k]) for k in whole[which]), which
    assert "fc.weight" in whole["last"]


@pytest.mark.parametrize("extra, message", [
    (["--checkpoint", "x"], "--resume continues the probe saved in"),
    (["--seed", "0"], "drop --seed"),
    (["--protocol", "hsakd"], "drop --protocol"),
    (["--out", "elsewhere"], "drop --out"),
    (["optim.lr=1"], "--resume: optim.lr=1: a resumed run keeps its recipe")])
def test_resume_refuses_another_probe_in_one_line(tmp_path, digits_teacher, capsys, extra, message):
    run = tmp_path / "probe"
    assert run_cli("linear-eval", "--checkpoint", digits_teacher, "--epochs", "1", "--no-augment", "--out", run,
                   *FAST) == 0
    capsys.readouterr()
    assert run_cli("linear-eval", "--resume", run, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_resume_of_a_training_run_or_no_run(tmp_path, digits_teacher, capsys):
    assert run_cli("linear-eval", "--resume", digits_teacher) == 2
    assert "is no linear-eval run (its regime is offline)" in capsys.readouterr().err
    assert run_cli("linear-eval", "--resume", tmp_path) == 2
    assert "is not a run folder (no config.yaml)" in capsys.readouterr().err
    assert run_cli("linear-eval") == 2
    assert "give the encoder with --checkpoint" in capsys.readouterr().err
