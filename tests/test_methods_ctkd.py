"""CTKD (zhengli97/CTKD): the curriculum, the learned temperature's loss and its reversed gradient equal the original
code on seeded inputs (tests/fixtures/ctkd_reference.json says how those numbers were made); hand-checked values,
published defaults, and gradients: the student gets the normal one, the temperature module the reversed one."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from kdzoo.core.batch import Batch, StepInfo
from kdzoo.distillers import METHODS
from kdzoo.distillers.ctkd import CTKDParams, GlobalTemperature, InstanceTemperature, ctkd_kd_loss, curriculum_lambda
from kdzoo.distillers.kd import kd_loss
from kdzoo.errors import ConfigError
from kdzoo.models.features import Features
from tests.conftest import REPO
from tests.method_harness import setup_context

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "ctkd_reference.json").read_text())


def build(num_classes: int = 10, **params):
    shapes = Features(logits=torch.Size([2, num_classes]))
    return METHODS.get("ctkd")(CTKDParams(**params), setup_context(shapes, shapes)).double()


def at_epoch(epoch_1based: int, epochs: int = 240) -> StepInfo:
    return StepInfo(epoch=epoch_1based - 1, epochs=epochs, step=0, steps_per_epoch=1)


def inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    ys = torch.randn(case["n"], case["c"], generator=g, dtype=torch.float64) * case["scale"]
    yt = torch.randn(case["n"], case["c"], generator=g, dtype=torch.float64) * case["scale"]
    return g, ys.requires_grad_(), yt


def run(method, ys, yt, targets, epoch):
    batch = Batch(inputs=torch.zeros(len(ys), 1), targets=targets)
    return method.losses(batch, Features(logits=ys), Features(logits=yt), at_epoch(epoch))["ctkd"]


@pytest.mark.parametrize("case", REFERENCE["schedule"], ids=lambda c: f"{c['max']}to{c['min']}-loops{c['loops']}")
def test_the_curriculum_equals_the_originals_cosine_decay(case):
    for epoch, value in zip(case["epochs"], case["values"]):
        assert curriculum_lambda(epoch, case["loops"], case["max"], case["min"]) == pytest.approx(value, abs=1e-12)
    method = build(decay_max=case["max"], decay_min=case["min"], decay_loops=case["loops"])
    for epoch, value in zip(case["epochs"], case["values"]):  # kdzoo's epochs count from 0
        assert method.gradient_factor(epoch - 1) == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("case", REFERENCE["global"], ids=lambda c: f"seed{c['seed']}-c{c['c']}-epoch{c['epoch']}")
def test_global_temperature_loss_and_reversed_gradient_equal_the_original(case):
    _, ys, yt = inputs(case)
    method = build(case["c"], t_start=case["t_start"], t_end=case["t_end"], decay_loops=case["loops"])
    with torch.no_grad():
        method.temperature_module.raw.fill_(case["raw"])
    loss = run(method, ys, yt, torch.zeros(case["n"], dtype=torch.long), case["epoch"])
    loss.backward()
    assert loss.item() == pytest.approx(case["loss"], rel=1e-9)
    assert method.temperature_module.raw.grad.item() == pytest.approx(case["grad_raw"], rel=1e-7)
    assert ys.grad.abs().sum().item() == pytest.approx(case["grad_s_abs_sum"], rel=1e-9)
    assert ys.grad[0, 0].item() == pytest.approx(case["grad_s_00"], rel=1e-9)
    assert method.on_epoch_start(case["epoch"] - 1)["ctkd_T"] == pytest.approx(case["T"], rel=1e-6)


@pytest.mark.parametrize("case", REFERENCE["instance"], ids=lambda c: f"seed{c['seed']}-c{c['c']}")
def test_instance_wise_loss_and_per_sample_gradients_equal_the_readme_code(case):
    """The per-sample loss (the README's KL_Loss loop, 1e-7 added to the teacher's probabilities) and the reversed
    gradient of each sample's raw temperature; the raw values stand in for the MLP's output."""
    g, ys, yt = inputs(case)
    raw = torch.randn(case["n"], generator=g, dtype=torch.float64).requires_grad_()
    method = build(case["c"], temperature="instance", decay_loops=case["loops"])
    method.temperature_module.forward = lambda teacher_logits, student_logits: raw
    loss = run(method, ys, yt, torch.zeros(case["n"], dtype=torch.long), case["epoch"])
    loss.backward()
    assert loss.item() == pytest.approx(case["loss"], rel=1e-9)
    torch.testing.assert_close(raw.grad, torch.tensor(case["grad_raw"], dtype=torch.float64), rtol=1e-7, atol=1e-15)
    assert ys.grad.abs().sum().item() == pytest.approx(case["grad_s_abs_sum"], rel=1e-9)
    assert ys.grad[0, 0].item() == pytest.approx(case["grad_s_00"], rel=1e-9)


@pytest.mark.parametrize("case", REFERENCE["dkd"], ids=lambda c: f"seed{c['seed']}-c{c['c']}")
def test_ctkd_with_dkd_equals_the_original(case):
    g, ys, yt = inputs(case)
    targets = torch.randint(0, case["c"], (case["n"],), generator=g)
    method = build(case["c"], base="dkd", dkd_alpha=case["alpha"], dkd_beta=case["beta"])
    with torch.no_grad():
        method.temperature_module.raw.fill_(case["raw"])
    loss = run(method, ys, yt, targets, case["epoch"])
    loss.backward()
    assert loss.item() == pytest.approx(case["loss"], rel=1e-9)
    # the original's temperature gradient under PyTorch 1.x semantics (the fixture says how); finite here
    assert method.temperature_module.raw.grad.item() == pytest.approx(case["grad_raw"], rel=1e-7)
    assert ys.grad.abs().sum().item() == pytest.approx(case["grad_s_abs_sum"], rel=1e-9)


def test_dkd_temperature_gradient_stays_finite_in_float32_where_teacher_probabilities_vanish():
    ys, yt = torch.randn(8, 100) * 3, torch.randn(8, 100) * 3  # NCKD: the -1000 shift makes teacher zeros
    method = METHODS.get("ctkd")(CTKDParams(base="dkd", t_start=1.0, t_end=0.0), setup_context(
        Features(logits=torch.Size([2, 100])), Features(logits=torch.Size([2, 100]))))
    ys.requires_grad_()
    run(method, ys, yt, torch.arange(8), 5).backward()
    assert torch.isfinite(ys.grad).all() and torch.isfinite(method.temperature_module.raw.grad).all()


def test_curriculum_by_hand():
    assert curriculum_lambda(0, 10) == 0.0  # the original never trains at epoch 0: its first epoch is 1
    assert curriculum_lambda(5, 10) == pytest.approx(-0.5)
    assert curriculum_lambda(10, 10) == curriculum_lambda(11, 10) == curriculum_lambda(240, 10) == -1.0
    assert curriculum_lambda(1, 10) == pytest.approx(-(1 - math.cos(math.pi / 10)) / 2)
    values = [curriculum_lambda(e, 10) for e in range(0, 12)]
    assert all(a > b for a, b in zip(values[:10], values[1:11]))  # strictly growing reversal over the loops


def test_loss_by_hand_and_equal_to_kd_at_the_same_temperature():
    z_s, z_t = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    T = torch.tensor([2.0], dtype=torch.float64)
    p_t, p_s = (z_t / 2).softmax(1)[0], (z_s / 2).softmax(1)[0]
    by_hand = 4.0 * float((p_t * (p_t / p_s).log()).sum())
    assert ctkd_kd_loss(z_s, z_t, T).item() == pytest.approx(by_hand, rel=1e-12)
    ys, yt = torch.randn(6, 10), torch.randn(6, 10) * 3
    torch.testing.assert_close(ctkd_kd_loss(ys, yt, torch.tensor([4.0])), kd_loss(ys, yt, 4.0))
    # per-sample temperatures: each row its own KD, averaged; equal temperatures give the global loss
    rows = torch.stack([kd_loss(ys[i:i + 1], yt[i:i + 1], 4.0) for i in range(6)]).mean()
    torch.testing.assert_close(ctkd_kd_loss(ys, yt, torch.full((6,), 4.0)), rows)
    # the README's 1e-7 on the teacher probabilities changes the value only slightly
    assert ctkd_kd_loss(ys, yt, torch.full((6,), 4.0), eps=1e-7).item() == pytest.approx(rows.item(), rel=1e-3)


def test_temperature_starts_at_the_originals_value_and_stays_in_range():
    method = build()
    assert method.temperature_module.raw.item() == 1.0  # Global_T: torch.ones(1)
    assert method.on_epoch_start(0)["ctkd_T"] == pytest.approx(1 + 20 / (1 + math.exp(-1)))
    ys, yt = torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64)
    for raw, bound in [(50.0, 21.0), (-50.0, 1.0)]:
        with torch.no_grad():
            method.temperature_module.raw.fill_(raw)
        assert method.temperature(ys, yt, -1.0).item() == pytest.approx(bound)


def test_the_student_gets_the_normal_gradient_and_the_temperature_the_reversed_one():
    ys0, yt = torch.randn(8, 10, dtype=torch.float64) * 3, torch.randn(8, 10, dtype=torch.float64) * 3
    method = build(decay_loops=10)
    for epoch in (1, 4, 12):
        factor = curriculum_lambda(epoch, 10)
        method.zero_grad()
        ys = ys0.clone().requires_grad_()
        run(method, ys, yt, torch.zeros(8, dtype=torch.long), epoch).backward()
        # the same loss with a plain (not reversed) temperature parameter
        raw = torch.ones(1, dtype=torch.float64, requires_grad=True)
        plain_ys = ys0.clone().requires_grad_()
        ctkd_kd_loss(plain_ys, yt, 1 + 20 * torch.sigmoid(raw)).backward()
        torch.testing.assert_close(ys.grad, plain_ys.grad)  # the student: unchanged
        torch.testing.assert_close(method.temperature_module.raw.grad, factor * raw.grad)  # the temperature: x lambda
        assert factor < 0 and torch.sign(method.temperature_module.raw.grad) == -torch.sign(raw.grad)


def test_gradient_ascent_on_the_temperature_raises_the_kd_loss():
    """One SGD step of the temperature alone (the reversed gradient) increases the loss it was computed from."""
    ys, yt = torch.randn(8, 10, dtype=torch.float64) * 3, torch.randn(8, 10, dtype=torch.float64) * 3
    method = build()
    with torch.no_grad():
        method.temperature_module.raw.fill_(-1.0)
    targets = torch.zeros(8, dtype=torch.long)
    before = run(method, ys, yt, targets, 20)
    before.backward()
    with torch.no_grad():
        method.temperature_module.raw -= 0.1 * method.temperature_module.raw.grad
    assert run(method, ys, yt, targets, 20).item() > before.item()


def test_instance_module_gradients_reach_its_mlp_and_not_the_teacher_and_the_student_only_directly():
    method = build(temperature="instance", instance_hidden=16)
    assert isinstance(method.temperature_module, InstanceTemperature)
    ys = torch.randn(5, 10, dtype=torch.float64, requires_grad=True)
    yt = torch.randn(5, 10, dtype=torch.float64, requires_grad=True)
    loss = run(method, ys, yt.detach(), torch.zeros(5, dtype=torch.long), 3)
    T = method.temperature(ys, yt, 1.0).detach()
    assert T.shape == (5,) and bool(((T > 1) & (T < 21)).all()) and T.std() > 0
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.temperature_module.parameters())
    assert yt.grad is None
    plain_ys = ys.detach().clone().requires_grad_()
    ctkd_kd_loss(plain_ys, yt.detach(), T, eps=1e-7).backward()
    torch.testing.assert_close(ys.grad, plain_ys.grad)  # the MLP reads detached probabilities


def test_published_defaults_recipe_and_adapters():
    cls = METHODS.get("ctkd")
    p = cls.Params()
    assert (p.temperature, p.t_start, p.t_end, p.decay_max, p.decay_min, p.decay_loops) == \
        ("global", 1.0, 20.0, 0.0, -1.0, 10.0)
    assert (p.base, p.dkd_alpha, p.dkd_beta) == ("kd", 1.0, 2.0)
    assert cls.recipes.loss == {"ce": 0.1, "ctkd": 0.9}
    method = build()
    assert isinstance(method.temperature_module, GlobalTemperature)
    assert [n for n, _ in method.named_parameters()] == ["temperature_module.raw"]  # trained by the run's optimizer
    with pytest.raises(ConfigError):
        build(temperature="instance", base="dkd")


def test_kd_loss_matches_torch_kl_div_in_float32():
    ys, yt = torch.randn(4, 100) * 5, torch.randn(4, 100) * 5
    T = torch.tensor([3.0])
    expected = F.kl_div(F.log_softmax(ys / 3, 1), F.softmax(yt / 3, 1), reduction="batchmean") * 9
    torch.testing.assert_close(ctkd_kd_loss(ys, yt, T), expected)
