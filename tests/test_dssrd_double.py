"""The double_student regime and the CNN-Transformer student: the EMA teacher update (the formula, only the
teacher), the strong student and its head in the optimizer, no gradient into the teacher, the head's width from
the feature spec, exact resume of all networks, bad input; `_trans` models deploy their CNN branch."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from kdzoo.config import load_config
from kdzoo.core.dist import DistInfo
from kdzoo.engine.step import weighted_total
from kdzoo.engine.trainer import make_engine
from kdzoo.models import create_model
from kdzoo.program import BuildContext
from kdzoo.program.optim import build_optimizer
from kdzoo.regimes.double_student import DoubleStudent, PredictionHead
from tests.conftest import CONFIGS, FAST, run_cli
from tests.method_harness import step_info, teacher_file

RECIPE = CONFIGS / "digits" / "dssrd" / "dssrd.yaml"
SMALL = [*FAST, "epochs=2", "dataset.subset=320"]


def _program(teacher, *overrides):
    cfg = load_config(RECIPE, [*SMALL, f"teacher.checkpoint={teacher}", *overrides])
    cpu = torch.device("cpu")
    return DoubleStudent.build(BuildContext(cfg=cfg, device=cpu, dist=DistInfo()))


def _one_step(program):
    phase = program.phases[-1]
    program.train(True)
    optimizer = build_optimizer(phase.params, load_config(RECIPE).optim)
    batch = program.data["train"].batch(next(iter(program.data["train"].loader(DistInfo()))))
    terms = phase.step(batch, step_info())
    optimizer.zero_grad()
    weighted_total(terms, phase.weights).backward()
    return optimizer, terms


def test_ema_teacher_follows_the_formula_and_only_the_teacher_moves(digits_teacher):
    program = _program(digits_teacher)
    models = program.models
    teacher, strong = models["teacher"].module, models["strong"].module
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), strong.state_dict().values()))
    before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(models["student"].module.state_dict())
    head_before = copy.deepcopy(program.trainable.strong.head.state_dict())
    optimizer, terms = _one_step(program)
    assert {"ce", "kd", "crd", "proto", "strong.mixup_ce"} <= set(terms)
    assert all(p.grad is None for p in teacher.parameters())  # gradients never reach the teacher
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in trained for p in strong.parameters())  # the strong student and its head are optimised
    assert all(id(p) in trained for p in program.trainable.strong.head.parameters())
    strong_grad = [p for p in strong.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert strong_grad, "strong.mixup_ce must train the strong student"
    optimizer.step()
    strong_after = copy.deepcopy(strong.state_dict())
    program.after_optimizer_step()
    for name, value in teacher.named_parameters():
        assert torch.allclose(value, 0.99 * before[name] + 0.01 * strong_after[name], atol=1e-6)
    for name, value in teacher.named_buffers():  # BN statistics: averaged too (ema_buffers: ema)
        if value.is_floating_point():
            assert torch.allclose(value, 0.99 * before[name] + 0.01 * strong_after[name], atol=1e-6)
        else:
            assert torch.equal(value, strong_after[name])
    assert any(not torch.equal(strong_after[k], before[k]) for k in before)
    assert any(not torch.equal(v, student_before[k]) for k, v in models["student"].module.state_dict().items())
    assert any(not torch.equal(v, head_before[k]) for k, v in program.trainable.strong.head.state_dict().items())


def test_keep_leaves_the_teachers_bn_statistics(digits_teacher):
    program = _program(digits_teacher, "double_student.ema_buffers=keep")
    teacher = program.models["teacher"].module
    before = copy.deepcopy(dict(teacher.named_buffers()))
    optimizer, _ = _one_step(program)
    optimizer.step()
    program.after_optimizer_step()
    assert all(torch.equal(v, before[k]) for k, v in teacher.named_buffers())


def test_head_width_comes_from_the_feature_spec(tmp_path):
    teacher = teacher_file(tmp_path, "wrn_16_2", num_classes=10, in_channels=1)
    program = _program(teacher)
    head = program.trainable.strong.head
    assert isinstance(head, PredictionHead)
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (10, 128, 10)
    logits = program.trainable.strong(torch.randn(4, 1, 8, 8)).logits
    assert logits.shape == (4, 10)


def test_mean_student_is_an_ema_of_the_weak_student_and_keys_proto(digits_teacher):
    program = _program(digits_teacher, "double_student.mean_student=true", "methods.proto.key_network=mean_student")
    slot = program.models["mean_student"]
    assert slot.role == "ema" and slot.ema_of == "student" and slot.ema_decay == 0.99
    from kdzoo.program import Runtime

    program.phases[-1].on_epoch_start(0, Runtime(program, torch.device("cpu")))  # clusters (warm-up 1): the key is read
    optimizer, terms = _one_step(program)
    assert float(terms["proto"].detach()) > 0
    before = copy.deepcopy(slot.module.state_dict())
    optimizer.step()
    program.after_optimizer_step()
    student = dict(program.models["student"].module.named_parameters())
    for name, value in slot.module.named_parameters():
        assert torch.allclose(value, 0.99 * before[name] + 0.01 * student[name].detach(), atol=1e-6)


def test_runs_resumes_exactly_and_deploys_student_and_teacher(tmp_path, digits_teacher):
    from tests.test_engine import _stop_after_epochs

    full, part = tmp_path / "full", tmp_path / "part"
    args = [*SMALL, f"teacher.checkpoint={digits_teacher}"]
    assert run_cli("distill", "-c", RECIPE, "--out", full, *args) == 0
    record = json.loads((full / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_strong.mixup_ce"] > 0 and record["train_proto"] > 0 and record["test_teacher_top1"] > 0
    engine = make_engine(load_config(RECIPE, args), part, quiet=True)
    _stop_after_epochs(engine, 1)
    assert run_cli("distill", "--resume", part, *FAST) == 0
    for name in ("last.safetensors", "teacher.last.safetensors"):
        a, b = load_file(str(full / "checkpoints" / name)), load_file(str(part / "checkpoints" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(str(digits_teacher / "checkpoints" / "best.safetensors"))
    moved = load_file(str(full / "checkpoints" / "teacher.last.safetensors"))
    assert any(not torch.equal(start[k], moved[k]) for k in start)
    state_full = torch.load(full / "checkpoints" / "last.state.pt", weights_only=True)
    state_part = torch.load(part / "checkpoints" / "last.state.pt", weights_only=True)
    for key, value in state_full["regime"]["bundle"].items():  # strong student, head, weak student, adapters
        assert torch.equal(value, state_part["regime"]["bundle"][key]), key


def test_teacher_arch_the_zoo_cannot_build_exits_2(tmp_path, capsys):
    from kdzoo.checkpoints.format import save_weights

    model = create_model("resnet8", num_classes=10, in_channels=1)
    path = tmp_path / "odd.safetensors"
    save_weights(path, model.state_dict(), {"arch": "resnet8_unknown", "num_classes": 10, "in_channels": 1})
    code = run_cli("distill", "-c", RECIPE, "--out", tmp_path / "r", f"teacher.checkpoint={path}", *FAST)
    err = capsys.readouterr().err
    assert code == 2 and "resnet8_unknown" in err and len(err.strip().splitlines()) == 1


def test_double_student_needs_a_teacher(tmp_path, capsys):
    code = run_cli("distill", "-c", RECIPE, "--out", tmp_path / "r", "teacher.checkpoint=null", *FAST)
    assert code == 2 and "teacher.checkpoint" in capsys.readouterr().err


# CNN-Transformer students -----------------------------------------------------------------------------------
def test_trans_parameter_counts_at_100_classes():
    counts = {arch: sum(p.numel() for p in create_model(arch, num_classes=100).parameters())
              for arch in ("resnet8x4_trans", "wrn_16_2_trans", "ResNet50_trans")}
    assert counts == {"resnet8x4_trans": 1_592_808, "wrn_16_2_trans": 826_648, "ResNet50_trans": 50_937_608}


def test_trans_branch_gradients_per_term(tmp_path):
    from tests.method_harness import backward_once, build_regime, random_batch

    r = build_regime(tmp_path, "resnet8x4_trans", None, {"trans_ce": 1.0, "trans_kd": 1.0})
    student = r.student
    for term, reached, untouched in (("trans_kd", "backbone.layer3", "branch"),
                                     ("trans_ce", "branch", "backbone.layer3")):
        r2 = build_regime(tmp_path, "resnet8x4_trans", None, {term: 1.0})
        backward_once(r2, random_batch(r2))
        params = dict(r2.student.named_parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in params.items() if n.startswith(reached))
        assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in params.items() if n.startswith(untouched))
    assert student.deploy_module() is student.backbone


def test_trans_student_deploys_its_cnn_branch(tmp_path, digits_teacher):
    out = tmp_path / "r"
    code = run_cli("distill", "-c", CONFIGS / "digits" / "dssrd" / "trans.yaml", "--out", out, "epochs=1",
                   f"teacher.checkpoint={digits_teacher}", *FAST)
    assert code == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_trans_kd"] > 0 and record["train_trans_ce"] > 0
    from kdzoo.checkpoints.load import load_model

    plain, meta, _ = load_model(out)
    assert meta["arch"] == "resnet8x4" and type(plain).__name__ != "TransNet"
    assert run_cli("eval", "--checkpoint", out, *[]) == 0


@pytest.mark.parametrize("arch", ["mlp_trans"])
def test_trans_for_an_arch_that_cannot_host_it_exits_2(tmp_path, capsys, arch):
    code = run_cli("train", "-c", CONFIGS / "digits" / "student.yaml", "--out", tmp_path / "r",
                   f"student.arch={arch}", *FAST)
    err = capsys.readouterr().err
    assert code == 2 and "cannot host a transformer branch" in err


def test_trans_kd_needs_a_trans_student(tmp_path):
    from kdzoo.errors import ConfigError
    from tests.method_harness import build_regime

    with pytest.raises(ConfigError, match="_trans model"):
        build_regime(tmp_path, "resnet8", None, {"ce": 1.0, "trans_kd": 1.0})


@pytest.mark.parametrize("override, message", [("methods.proto.key_view=x3", "no view 'x3'"),
                                               ("methods.proto.key_network=peer", "network 'peer'")])
def test_proto_key_is_checked_when_the_run_is_built(tmp_path, digits_teacher, capsys, override, message):
    code = run_cli("distill", "-c", RECIPE, "--out", tmp_path / "r", f"teacher.checkpoint={digits_teacher}",
                   override, *FAST)
    err = capsys.readouterr().err
    assert code == 2 and message in err


def test_trans_student_in_the_double_student_regime_deploys_its_cnn(tmp_path, digits_teacher):
    out = tmp_path / "r"
    assert run_cli("distill", "-c", RECIPE, "--out", out, *SMALL, "epochs=1", f"teacher.checkpoint={digits_teacher}",
                   "student.arch=resnet8_trans", "loss.trans_kd=1", "loss.trans_ce=1") == 0
    from kdzoo.checkpoints.load import load_model

    assert load_model(out)[1]["arch"] == "resnet8"
