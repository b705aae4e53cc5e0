"""Tests that kill the mutations a mutation pass found surviving (issue 23): the BYOL target is a copy and sees
the un-mixed second view; the best-validation weights give the reported test accuracy; a tie is no improvement;
a resume keeps the best state for the next plateau reload; an improvement resets the plateau counter; mixup CE
puts lambda on the image's own label."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdzoo.checkpoints.load import load_model
from kdzoo.config import load_config
from kdzoo.config.schema import ScheduleConfig
from kdzoo.core.dist import DistInfo
from kdzoo.engine.step import weighted_total
from kdzoo.engine.trainer import Engine
from kdzoo.program.controllers import PlateauController
from kdzoo.program.evaluators import evaluate
from tests.method_harness import build_regime, random_batch, step_info
from tests.test_engine import _stop_after_epochs
from tests.test_program import PLATEAU, SMALL, STUDENT, _checkpoint, _metrics
from tests.test_self_supervised import _program as byol_program


# BYOL: online and target ------------------------------------------------------------------------------------------
def _one_byol_step(program):
    phase = program.phases[0]
    program.train(True)
    batch = program.data["train"].batch(next(iter(program.data["train"].loader(DistInfo()))))
    terms = phase.step(batch, step_info())
    weighted_total(terms, phase.weights).backward()
    return batch


def test_the_target_is_a_copy_and_every_online_weight_learns():
    torch.manual_seed(0)
    program = byol_program()
    online, target = program.models["student"].module, program.models["teacher"].module
    assert not {id(p) for p in online.parameters()} & {id(p) for p in target.parameters()}
    assert not {id(b) for b in online.buffers()} & {id(b) for b in target.buffers()}
    _one_byol_step(program)
    head = online.features.spec.head  # the encoder's classifier: BYOL never reads logits of the encoder
    for name, p in online.named_parameters():
        if not name.startswith(f"features.model.{head}."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    predictor = program.trainable.methods["byol"].predictor
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor.parameters())


def test_online_sees_the_imix_of_view_x_and_the_target_sees_view_x2(monkeypatch):
    from kdzoo.distillers import byol

    torch.manual_seed(0)
    program = byol_program()
    drawn = {}
    real = byol.imix_lambdas
    monkeypatch.setattr(byol, "imix_lambdas", lambda n, device: drawn.setdefault("lp", real(n, device)))
    seen = {"student": [], "teacher": []}  # every input each encoder ran on in the step
    for name in ("student", "teacher"):
        encoder = program.models[name].module.features.model
        encoder.register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0].detach().clone()))
    batch = _one_byol_step(program)
    lam, perm = drawn["lp"]
    x, x2 = batch.view("x"), batch.view("x2")
    assert not torch.allclose(x, x2)  # two augmentations of the same images
    mixed = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm]
    assert len(seen["student"]) == 1 and torch.allclose(seen["student"][0], mixed, atol=1e-6)
    assert len(seen["teacher"]) == 1 and torch.equal(seen["teacher"][0], x2)


# The engine's best-validation bookkeeping -------------------------------------------------------------------------
def _scripted(script):
    """tests/test_program.py's scripted validation, with the at-best test evaluator the offline regime gives."""
    from kdzoo.program.evaluators import MetricEvaluator
    from kdzoo.regimes.offline import Offline

    def build(ctx):
        program = Offline.build(ctx)
        main = program.phases[-1]
        measured = [e for e in [*main.evaluators, *main.at_best] if getattr(e, "stream", None) == "test"]
        main.evaluators = [MetricEvaluator(lambda runtime: {"val_top1": script[runtime.epoch]})]
        main.at_best = measured  # the test stream is measured once, on the best-validation weights
        return program

    return build


def _test_top1(file):
    model, meta, _ = load_model(file)
    from kdzoo.data import build_dataset, make_loader

    test = build_dataset(meta["dataset"], "test", augment=False)
    return evaluate(model, make_loader(test, batch_size=256, train=False, seed=0), torch.device("cpu"))["top1"]


def test_the_reported_test_accuracy_is_that_of_the_best_validation_weights(tmp_path):
    """A constant schedule and the best validation at epoch 1 of 4: the weights move on after it."""
    run = tmp_path / "run"
    cfg = load_config(STUDENT, [*SMALL, "dataset.val_fraction=0.2", "schedule.name=constant", "epochs=4",
                                "optim.lr=0.1"])
    summary = Engine(cfg, run, build=_scripted([30.0, 20.0, 10.0, 5.0]), quiet=True).fit()
    assert summary["best_epoch"] == 1
    best = _test_top1(run / "checkpoints" / "best.safetensors")
    last = _test_top1(run / "checkpoints" / "last.safetensors")
    assert best != last  # else this test could not tell them apart
    assert summary["best_metrics"]["test_top1"] == pytest.approx(best)


def test_a_tie_is_not_an_improvement(tmp_path):
    run = tmp_path / "tie"
    cfg = load_config(STUDENT, [*SMALL, "dataset.val_fraction=0.2", "schedule.name=constant", "epochs=4"])
    summary = Engine(cfg, run, build=_scripted([10.0, 20.0, 20.0, 15.0]), quiet=True).fit()
    assert summary["best_epoch"] == 2 and summary["best_value"] == 20.0


def test_a_resume_between_the_best_epoch_and_the_reload_keeps_the_best_state(tmp_path):
    """Best at epoch 2, patience 2: the reload comes after epoch 4; the run is killed after epoch 3."""
    from tests.test_program import scripted_validation

    cfg = load_config(STUDENT, [*PLATEAU, "epochs=5"])
    full, part = tmp_path / "full", tmp_path / "part"
    Engine(cfg, full, build=scripted_validation, quiet=True).fit()
    engine = Engine(cfg, part, build=scripted_validation, quiet=True)
    _stop_after_epochs(engine, 3)
    Engine(cfg, part, build=scripted_validation, resume=True, quiet=True).fit()
    assert _metrics(part)[3]["reloaded_best"] == 2
    a, b = _checkpoint(full), _checkpoint(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_improvement_resets_the_plateau_counter():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    plateau = PlateauController(optimizer, ScheduleConfig(name="constant"), 10, 1, patience=2, factor=0.5,
                                reload_best=False)
    for improved in (False, True, False):
        assert plateau.after_eval({}, improved=improved).reload_best is False
    assert plateau.scale == 1.0 and plateau.bad == 1  # one bad evaluation since the last improvement
    plateau.after_eval({}, improved=False)
    assert plateau.scale == 0.5


# mixup CE ---------------------------------------------------------------------------------------------------------
def test_mixup_ce_weights_each_label_by_its_share_of_the_image(tmp_path, monkeypatch):
    from kdzoo.data import input_mixing

    regime = build_regime(tmp_path, "resnet8", None, {"mixup_ce": 1.0})
    monkeypatch.setattr(input_mixing, "beta_1_1", lambda: 0.7)
    monkeypatch.setattr(input_mixing, "derangement", lambda n: torch.roll(torch.arange(n), 1))
    batch = random_batch(regime)
    assert (batch.targets != batch.targets.roll(1)).all()
    regime.train(False)  # BatchNorm on running statistics: the hand computation sees the same network
    loss = float(regime.phases()[-1].step(batch, step_info())["mixup_ce"].detach())
    x, y = batch.inputs, batch.targets
    partner = torch.roll(torch.arange(len(y)), 1)
    with torch.no_grad():
        logits = regime.student(0.7 * x + 0.3 * x[partner]).float()
    expected = 0.7 * F.cross_entropy(logits, y) + 0.3 * F.cross_entropy(logits, y[partner])
    swapped = 0.3 * F.cross_entropy(logits, y) + 0.7 * F.cross_entropy(logits, y[partner])
    assert loss == pytest.approx(float(expected), rel=1e-5) and abs(float(expected - swapped)) > 1e-3
