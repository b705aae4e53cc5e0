"""The self_supervised regime (BYOL + i-Mix): the loss against a hand computation with fixed lambdas and
permutation, the EMA target (encoder and projector, not the predictor; before the next target forward; training
mode, no gradients), label-free training (garbage labels give the same weights), bad input, the CLI path to
linear evaluation."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from kdzoo.config import load_config
from kdzoo.core.dist import DistInfo
from kdzoo.distillers.byol import ByolParams, byol_imix_loss, imix_lambdas
from kdzoo.engine.step import weighted_total
from kdzoo.engine.trainer import make_engine
from kdzoo.program import BuildContext
from kdzoo.program.optim import build_optimizer
from kdzoo.regimes.self_supervised import SelfSupervised
from tests.conftest import CONFIGS, FAST, run_cli
from tests.method_harness import step_info

RECIPE = CONFIGS / "digits" / "self_supervised" / "byol.yaml"
SMALL = [*FAST, "epochs=1", "dataset.subset=256", "engine.precision=fp32"]


def test_loss_by_hand_with_fixed_lambdas_and_permutation():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    k = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    lam, perm = torch.tensor([0.5, 0.75, 1.0]), torch.tensor([1, 2, 0])
    qn = [[1, 0], [0, 1], [0.6, 0.8]]
    kn = [[0, 1], [1, 0], [2 ** -0.5, 2 ** -0.5]]
    dot = lambda a, b: a[0] * b[0] + a[1] * b[1]  # noqa: E731
    expected = sum(2 - 2 * (lam[i] * dot(qn[i], kn[i]) + (1 - lam[i]) * dot(qn[i], kn[perm[i]]))
                   for i in range(3)) / 3
    assert float(byol_imix_loss(q, k, lam, perm)) == pytest.approx(float(expected), rel=1e-6)
    assert float(byol_imix_loss(q, k, torch.ones(3), torch.arange(3))) == pytest.approx(
        float(sum(2 - 2 * dot(qn[i], kn[i]) for i in range(3)) / 3), rel=1e-6)


def test_imix_lambdas_are_max_of_b_and_one_minus_b():
    torch.manual_seed(0)
    lam, perm = imix_lambdas(1000, "cpu")
    assert float(lam.min()) >= 0.5 and float(lam.max()) <= 1 and sorted(perm.tolist()) == list(range(1000))
    assert abs(float(lam.mean()) - 0.75) < 0.02  # max(b, 1 - b) of a uniform b: uniform on [0.5, 1]
    assert ByolParams() == ByolParams(imix=True, symmetric=False, target_view="x2")


def _program(*overrides):
    cfg = load_config(RECIPE, [*SMALL, *overrides])
    cpu = torch.device("cpu")
    return SelfSupervised.build(BuildContext(cfg=cfg, device=cpu, dist=DistInfo()))


def test_ema_target_covers_encoder_and_projector_before_the_next_forward():
    torch.manual_seed(0)
    program = _program()
    online, target = program.models["student"].module, program.models["teacher"].module
    assert program.models["teacher"].ema_decay == 0.99 and not hasattr(target, "predictor")
    assert all(torch.equal(a, b) for a, b in zip(online.state_dict().values(), target.state_dict().values()))
    phase = program.phases[0]
    optimizer = build_optimizer(phase.params, load_config(RECIPE).optim)
    predictor = program.trainable.methods["byol"].predictor
    assert {id(p) for p in predictor.parameters()} <= {id(p) for p in phase.params}
    seen = []
    target.features.model.conv1.register_forward_pre_hook(lambda m, i: seen.append(m.weight.detach().clone()))
    loader = iter(program.data["train"].loader(DistInfo()))
    program.train(True)
    assert target.training  # batch statistics, as BYOL's target
    before = copy.deepcopy(target.state_dict())
    terms = phase.step(program.data["train"].batch(next(loader)), step_info())
    optimizer.zero_grad()
    weighted_total(terms, phase.weights).backward()
    assert all(p.grad is None for p in target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in online.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor.parameters() if p.dim() > 1)
    optimizer.step()
    program.after_optimizer_step()
    online_now = dict(online.named_parameters())
    for name, value in target.named_parameters():
        assert torch.allclose(value, 0.99 * before[name] + 0.01 * online_now[name].detach(), atol=1e-6)
    phase.step(program.data["train"].batch(next(loader)), step_info(step=1))
    assert torch.equal(seen[-1], target.features.model.conv1.weight)  # the next forward saw the updated target


DSSRD = CONFIGS / "digits" / "self_supervised" / "dssrd.yaml"


@pytest.mark.parametrize("recipe", [RECIPE, DSSRD], ids=["byol", "dssrd"])
def test_labels_are_never_used_in_training(tmp_path, recipe):
    weights = []
    for garbage in (False, True):
        proto_now = ["methods.weak.proto.warmup_epochs=1"] if recipe == DSSRD else []  # proto acts in epoch 1
        cfg = load_config(recipe, [*SMALL, *proto_now])
        engine = make_engine(cfg, tmp_path / f"run{int(garbage)}", quiet=True)
        if garbage:
            raw = engine.program.data["train"].dataset
            while hasattr(raw, "dataset") or hasattr(raw, "raw"):
                raw = getattr(raw, "dataset", None) or raw.raw
            original = raw.targets.clone()
            raw.targets = torch.randint(0, 10, raw.targets.shape, generator=torch.Generator().manual_seed(1))
            assert float((raw.targets != original).float().mean()) > 0.5
            stream = engine.program.data["train"]
            with torch.random.fork_rng():  # reading a sample draws its augmentation: keep the run's RNG as it is
                seen = [int(stream.dataset[i][1]) for i in range(8)]
            from kdzoo.data.wrappers import source_indices

            chosen = source_indices(stream.dataset)
            assert seen != [int(original[j]) for j in chosen[:8]]  # the loader yields garbage
        engine.fit()
        if recipe == DSSRD:
            record = json.loads((tmp_path / f"run{int(garbage)}" / "metrics.jsonl").read_text().splitlines()[-1])
            assert record["train_weak.proto"] > 0
        folder = tmp_path / f"run{int(garbage)}" / "checkpoints"
        weights.append({name: load_file(str(folder / name)) for name in ("last.safetensors", "target.last.safetensors")
                        + (("weak.last.safetensors",) if recipe == DSSRD else ())})
    for name, first in weights[0].items():
        assert all(torch.equal(first[k], weights[1][name][k]) for k in first), name


def test_labelled_methods_and_other_regimes_exit_2(tmp_path, capsys):
    assert run_cli("pretrain", "-c", RECIPE, "--out", tmp_path / "a", "loss.ce=1", *FAST) == 2
    assert "trains with labels" in capsys.readouterr().err
    assert run_cli("pretrain", "-c", CONFIGS / "digits" / "student.yaml", "--out", tmp_path / "b", *FAST) == 2
    assert "without labels" in capsys.readouterr().err


def test_pretrain_then_linear_eval(tmp_path):
    run, probe = tmp_path / "byol", tmp_path / "probe"
    assert run_cli("pretrain", "-c", RECIPE, "--out", run, "epochs=2", *FAST) == 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_byol"] > 0 and 0 < record["test_knn_top1"] <= 100
    from kdzoo.linear_eval import encoder_file

    assert encoder_file(str(run), "student").name == "last.safetensors"  # best was picked on test labels
    assert encoder_file(str(run), "target").name == "target.last.safetensors"
    for network in ("student", "target"):
        assert run_cli("linear-eval", "--checkpoint", run, "--network", network, "--no-augment", "--epochs", "2",
                       "--out", probe / network, *FAST) == 0


def test_weak_student_learns_crd_from_the_target_with_instance_negatives(tmp_path, capsys):
    torch.manual_seed(0)
    program = _program_of(DSSRD)
    weak, target = program.models["weak"].module, program.models["teacher"].module
    phase = program.phases[0]
    program.train(True)
    batch = program.data["train"].batch(next(iter(program.data["train"].loader(DistInfo()))))
    terms = phase.step(batch, step_info())
    for p in phase.params:
        p.grad = None
    terms["weak.crd"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in weak.parameters())
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is None for p in program.models["student"].module.parameters())  # crd trains the weak alone
    code = run_cli("pretrain", "-c", DSSRD, "--out", tmp_path / "r", "methods.weak.crd.negatives=class", *FAST)
    assert code == 2 and "trains with labels" in capsys.readouterr().err
    run = tmp_path / "ok"
    assert run_cli("pretrain", "-c", DSSRD, "--out", run, *SMALL) == 0
    assert run_cli("linear-eval", "--checkpoint", run, "--network", "weak", "--no-augment", "--epochs", "1", "--out",
                   tmp_path / "probe", *FAST) == 0


def _program_of(recipe):
    cfg = load_config(recipe, [*SMALL])
    cpu = torch.device("cpu")
    return SelfSupervised.build(BuildContext(cfg=cfg, device=cpu, dist=DistInfo()))
