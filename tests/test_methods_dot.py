"""DOT (megvii-research/mdistiller engine/dot.py): kdzoo's engine step with DOT's optimizer moves the weights
exactly as the original trainer does (tests/fixtures/dot_reference.json says how those numbers were made), a
first step by hand, which term goes to which momentum, the published defaults, and a digits run with resume."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from kdzoo.config import load_config
from kdzoo.core.batch import StepInfo
from kdzoo.distillers import METHODS
from kdzoo.distillers.dot import DistillationOrientedTrainer
from kdzoo.engine.device import Precision
from kdzoo.engine.step import train_step
from kdzoo.engine.trainer import make_engine
from kdzoo.errors import ConfigError
from kdzoo.program import Phase
from tests.conftest import CONFIGS, FAST, REPO, run_cli
from tests.test_engine import _stop_after_epochs

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "dot_reference.json").read_text())
FP32 = Precision("fp32", torch.device("cpu"))
INFO = StepInfo(epoch=0, epochs=1, step=0, steps_per_epoch=1)


def problem(seed):
    """A body (both losses reach it), an adapter (distillation only), a head (task only); float64."""
    g = torch.Generator().manual_seed(seed)
    body = torch.randn(6, 5, generator=g, dtype=torch.float64).requires_grad_()
    adapter = torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_()
    head = torch.randn(5, 3, generator=g, dtype=torch.float64).requires_grad_()
    xs = [torch.randn(8, 6, generator=g, dtype=torch.float64) for _ in range(5)]
    targets = [torch.randn(8, 4, generator=g, dtype=torch.float64) for _ in range(5)]
    labels = [torch.randint(0, 3, (8,), generator=g) for _ in range(5)]
    return [body, adapter, head], xs, targets, labels


def terms_of(params, x, t, y):
    body, adapter, head = params
    h = torch.tanh(x @ body)
    return {"ce": torch.nn.functional.cross_entropy(h @ head, y), "kd": ((h @ adapter - t) ** 2).mean()}


def run_engine_steps(case, weights=None):
    params, xs, ts, ys = problem(case["seed"])
    m, delta = case["momentum"], case["delta"]
    opt = DistillationOrientedTrainer(params, lr=case["lr"], momentum=m - delta, momentum_kd=m + delta,
                                      weight_decay=case["weight_decay"])
    for x, t, y in zip(xs, ts, ys):
        phase = Phase(name="main", epochs=1, params=params, step=lambda b, i, x=x, t=t, y=y: terms_of(params, x, t, y),
                      weights=weights or {"ce": 1.0, "kd": 1.0}, task_terms=frozenset({"ce"}))
        train_step(phase, None, INFO, opt, FP32)
    return params


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"seed{c['seed']}")
def test_engine_step_with_dot_equals_the_original_trainer(case):
    params = run_engine_steps(case)
    for got, want in zip(params, case["params"]):
        torch.testing.assert_close(got.detach().flatten(), torch.tensor(want, dtype=torch.float64), rtol=1e-5,
                                   atol=1e-9)


def test_first_two_steps_by_hand():
    """Step 1: every buffer is its first gradient (task gradient with weight decay; the adapter's distillation
    gradient without it). Step 2: the body (both losses) uses m - delta for the task and m + delta for the
    distillation buffer, the head (task only) and the adapter (distillation only, now with decay) the mean m."""
    lr, m, delta, wd = 0.1, 0.9, 0.1, 0.01
    params, xs, ts, ys = problem(5)
    body, adapter, head = (p.detach().clone() for p in params)

    def grads(ps, i):
        t = terms_of(ps, xs[i], ts[i], ys[i])
        g_ce = torch.autograd.grad(t["ce"], ps, allow_unused=True, retain_graph=True)
        g_kd = torch.autograd.grad(t["kd"], ps, allow_unused=True)
        return g_ce, g_kd

    ref = [p.clone().requires_grad_() for p in (body, adapter, head)]
    g_ce, g_kd = grads(ref, 0)
    b_task = [g_ce[0] + wd * body, None, g_ce[2] + wd * head]
    b_kd = [g_kd[0], g_kd[1], None]
    new = [body - lr * b_task[0] - lr * b_kd[0], adapter - lr * b_kd[1], head - lr * b_task[2]]
    ref = [p.detach().clone().requires_grad_() for p in new]
    g_ce, g_kd = grads(ref, 1)
    b_task = [(m - delta) * b_task[0] + g_ce[0] + wd * new[0], None, m * b_task[2] + g_ce[2] + wd * new[2]]
    b_kd = [(m + delta) * b_kd[0] + g_kd[0], m * b_kd[1] + g_kd[1] + wd * new[1], None]
    expected = [new[0] - lr * b_task[0] - lr * b_kd[0], new[1] - lr * b_kd[1], new[2] - lr * b_task[2]]

    opt = DistillationOrientedTrainer(params, lr=lr, momentum=m - delta, momentum_kd=m + delta, weight_decay=wd)
    for i in range(2):
        phase = Phase(name="main", epochs=1, params=params, step=lambda b, _, i=i: terms_of(params, xs[i], ts[i], ys[i]),
                      weights={"ce": 1.0, "kd": 1.0}, task_terms=frozenset({"ce"}))
        train_step(phase, None, INFO, opt, FP32)
    for got, want in zip(params, expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-12)


def test_the_task_group_is_the_declared_task_terms():
    """Swapping which term is the task loss changes the update: the split follows `task_terms`, not the order."""
    case = REFERENCE["cases"][0]
    as_published = run_engine_steps(case)
    params, xs, ts, ys = problem(case["seed"])
    opt = DistillationOrientedTrainer(params, lr=case["lr"], momentum=0.825, momentum_kd=0.975,
                                      weight_decay=case["weight_decay"])
    for x, t, y in zip(xs, ts, ys):
        phase = Phase(name="main", epochs=1, params=params, step=lambda b, i, x=x, t=t, y=y: terms_of(params, x, t, y),
                      weights={"ce": 1.0, "kd": 1.0}, task_terms=frozenset({"kd"}))
        train_step(phase, None, INFO, opt, FP32)
    assert not torch.allclose(params[0], as_published[0])
    assert METHODS.get("ce").task_terms == ("ce",) and METHODS.get("kd").task_terms == ()


def test_published_defaults():
    cls = METHODS.get("dot")
    assert cls.Params().delta == 0.075  # mdistiller configs/cifar100/dot: DELTA 0.075 (ImageNet 0.09)
    assert cls.recipes.loss == {"ce": 0.1, "kd": 0.9}
    assert cls.term_names() == ()


def test_dot_needs_plain_sgd_and_a_delta_below_the_momentum():
    cls = METHODS.get("dot")
    method = cls(cls.Params(), None)
    cfg = load_config(CONFIGS / "digits" / "kd.yaml", ["optim.name=adamw"])
    with pytest.raises(ConfigError, match="optim.name: sgd"):
        method.make_optimizer([torch.zeros(1, requires_grad=True)], cfg.optim, 0.1)
    cfg = load_config(CONFIGS / "digits" / "kd.yaml")
    big = cls(cls.Params(delta=0.95), None)
    with pytest.raises(ConfigError, match="exceeds optim.momentum"):
        big.make_optimizer([torch.zeros(1, requires_grad=True)], cfg.optim, 0.1)
    opt = method.make_optimizer([torch.zeros(1, requires_grad=True)], cfg.optim, 0.1)
    group = opt.param_groups[0]
    assert (group["momentum"], group["momentum_kd"]) == pytest.approx((0.9 - 0.075, 0.9 + 0.075))


def test_digits_run_with_dot_keeps_both_buffers_and_resumes_exactly(tmp_path, digits_teacher):
    common = ["epochs=2", f"teacher.checkpoint={digits_teacher}", "dataset.subset.size=256", *FAST]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli("distill", "-c", CONFIGS / "digits" / "dot.yaml", "--out", full, *common) == 0
    engine = make_engine(load_config(CONFIGS / "digits" / "dot.yaml", common), part, quiet=True)
    _stop_after_epochs(engine, 1)
    assert run_cli("distill", "--resume", part, *FAST) == 0
    state = torch.load(full / "checkpoints" / "last.state.pt", weights_only=True)
    kinds = {k for s in state["optimizer"]["state"].values() for k in s}
    assert kinds == {"momentum_buffer", "momentum_kd_buffer"}  # the adapters-free KD student: both on each weight
    a, b = (load_file(run / "checkpoints" / "last.safetensors") for run in (full, part))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_python_api_steps_dot_as_the_trainer_does():
    """kdzoo.Distiller with methods={"dot": ...}: its optimizer is DOT's, and backward_step gives it the KD
    gradient apart from the CE one - the same weights as doing mdistiller's sequence by hand."""
    import copy

    from kdzoo import Distiller
    from kdzoo.models import create_model

    torch.manual_seed(0)
    student, teacher = create_model("resnet8", num_classes=10), create_model("resnet14", num_classes=10)
    twin, start = copy.deepcopy(student), copy.deepcopy(student)
    x, y = torch.randn(6, 3, 16, 16), torch.arange(6) % 10
    runs = []
    for net in (student, twin):
        d = Distiller(net, teacher, loss={"ce": 0.1, "kd": 0.9}, methods={"dot": {"delta": 0.075}}, example=x[:2])
        runs.append((d, d.optimizer(lr=0.1, momentum=0.9, weight_decay=5e-4)))
    (api, opt), (by_hand, opt2) = runs
    assert isinstance(opt, DistillationOrientedTrainer)
    assert (opt.param_groups[0]["momentum"], opt.param_groups[0]["momentum_kd"]) == pytest.approx((0.825, 0.975))
    for _ in range(2):
        api.backward_step(api(x, y), opt)
        out = by_hand(x, y)
        params = by_hand.trainable_parameters()
        opt2.zero_grad(set_to_none=True)
        kd = torch.autograd.grad(0.9 * out.terms["kd"], params, retain_graph=True, allow_unused=True)
        opt2.keep_gradients("distill", params, list(kd))
        (0.1 * out.terms["ce"]).backward()
        opt2.step()
    for a, b in zip(student.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(next(student.parameters()), next(start.parameters()))  # the steps moved the weights
