"""USKD (yzd-v/cls_KD): equal to the original code, term by term, on held-out random inputs with the same weak-head
weights (tests/fixtures/uskd_reference.json says how those numbers were made), a hand-ranked case, the code's
log-probability rank against the probability one, published defaults, and gradients: the student's logits and the
pooled middle stage through the method's weak head, no teacher."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from kdzoo.core.batch import Batch
from kdzoo.distillers import METHODS
from kdzoo.distillers.uskd import uskd_loss
from kdzoo.models.features import Features, Needs
from tests.conftest import REPO
from tests.method_harness import (
    assert_gradient_routing,
    build_regime,
    probed_pair,
    random_batch,
    setup_context,
    step_info,
)

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "uskd_reference.json").read_text())
TERMS = {"target": (1.0, 0.0, 0.0), "non": (0.0, 1.0, 0.0), "weak": (0.0, 0.0, 1.0)}


def case_inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    n, c, ch, h = case["n"], case["c"], case["ch"], case["h"]
    fmap = torch.randn(n, ch, h, h, generator=g, dtype=torch.float64)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * case["scale"]
    weight = torch.randn(c, ch, generator=g, dtype=torch.float64) * case["wscale"]
    bias = torch.randn(c, generator=g, dtype=torch.float64) * case["wscale"]
    labels = torch.randint(0, c, (n,), generator=g)
    if case["soft"]:
        lam = torch.rand(n, generator=g, dtype=torch.float64)
        other = (labels + torch.randint(1, c, (n,), generator=g)) % c
        eye = torch.eye(c, dtype=torch.float64)
        labels = lam[:, None] * eye[labels] + (1 - lam[:, None]) * eye[other]
    return fmap, logits, weight, bias, labels


def build(c: int, ch: int, h: int, **params):
    shapes = Features(logits=torch.Size([2, c]), stages=[torch.Size([2, ch, h, h]), torch.Size([2, 4, 1, 1])])
    cls = METHODS.get("uskd")
    return cls(cls.Params(**params), setup_context(shapes, None))


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"seed{c['seed']}-c{c['c']}-soft{c['soft']}")
def test_uskd_equals_the_original_code_term_by_term(case):
    fmap, logits, weight, bias, labels = case_inputs(case)
    weak = F.linear(fmap.mean(dim=(2, 3)), weight, bias)
    got = uskd_loss(logits, weak, labels, case["alpha"], case["beta"], case["mu"])
    assert got.item() == pytest.approx(case["uskd"], rel=1e-5)
    for term, weights in TERMS.items():
        assert uskd_loss(logits, weak, labels, *weights).item() == pytest.approx(case[term], rel=1e-5), term


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"seed{c['seed']}")
def test_the_method_pools_its_stage_through_its_weak_head_as_the_original(case):
    fmap, logits, weight, bias, labels = case_inputs(case)
    method = build(case["c"], case["ch"], case["h"], alpha=case["alpha"], beta=case["beta"], mu=case["mu"]).double()
    method.weak_head.load_state_dict({"weight": weight, "bias": bias})
    s = Features(logits=logits, stages=[fmap, torch.full((case["n"], 4, 1, 1), math.nan, dtype=torch.float64)])
    batch = Batch(inputs=torch.zeros(case["n"], 1), targets=labels)
    out = method.losses(batch, s, None, step_info())
    assert set(out) == {"uskd"} and out["uskd"].item() == pytest.approx(case["uskd"], rel=1e-5)


def test_uskd_by_hand_on_three_classes():
    """Uniform weak head: the rank is the student's; row 2's target sits second, so Zipf's weights skip 1/2."""
    z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    weak = torch.zeros(2, 3, dtype=torch.float64)
    s_y = torch.stack([z[0].softmax(0)[0], z[1].softmax(0)[2]])
    p = s_y**2 + 1 - (s_y**2).mean()
    target = -(p * s_y.log()).mean()
    non_1 = -(0.6 * z[0, [1, 2]].log_softmax(0)[0] + 0.4 * z[0, [1, 2]].log_softmax(0)[1])  # 1/2, 1/3
    non_2 = -(0.25 * z[1, [0, 1]].log_softmax(0)[0] + 0.75 * z[1, [0, 1]].log_softmax(0)[1])  # 1/3, 1
    non = (non_1 + non_2) / 2
    weak_ce = math.log(3)  # label-smoothed CE of a uniform prediction
    got = uskd_loss(z, weak, y, 0.7, 0.3, 0.2)
    assert got.item() == pytest.approx((0.7 * target + 0.3 * non + 0.2 * weak_ce).item(), rel=1e-9)


def test_the_code_ranks_with_log_probabilities_where_probabilities_rank_otherwise():
    """z = (5, 0, -1), weak favouring class 2: log-probabilities put class 1 above class 2 (Zipf 1/2, 1/3),
    probabilities put class 2 above (1/3, 1/2)."""
    z, weak, y = torch.tensor([[5.0, 0.0, -1.0]]), torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([0])
    log_non = z[0, 1:].log_softmax(0)
    code = -(0.6 * log_non[0] + 0.4 * log_non[1])
    probs = -(0.4 * log_non[0] + 0.6 * log_non[1])
    assert uskd_loss(z, weak, y, 0.0, 1.0, 0.0).item() == pytest.approx(code.item(), rel=1e-6)
    assert uskd_loss(z, weak, y, 0.0, 1.0, 0.0, rank_log_probs=False).item() == pytest.approx(probs.item(), rel=1e-6)


def test_published_defaults_and_weights():
    cls = METHODS.get("uskd")
    params = cls.Params()
    assert (params.alpha, params.beta, params.mu, params.stage, params.rank_log_probs) == (1.0, 0.1, 0.005, -2, True)
    assert cls.recipes.loss == {"ce": 1.0, "uskd": 1.0}
    assert cls.recipes.variant_params == {"uskd": {"alpha": 0.1, "beta": 0.1, "mu": 0.1}}  # the CIFAR-100 config
    assert cls.teacher_needs == Needs() and not cls.needs_teacher()
    assert cls.student_needs == Needs(logits=True, stages=True)


def test_the_weak_head_reads_the_second_to_last_stage_map():
    student, _, s_shapes, _ = probed_pair("resnet8", "resnet14")
    cls = METHODS.get("uskd")
    method = cls(cls.Params(), setup_context(s_shapes, None, student))
    assert (method.weak_head.in_features, method.weak_head.out_features) == (s_shapes.stages[-2][1], 10)
    assert s_shapes.stages[-2][1] != s_shapes.stages[-1][1]  # the test tells the two apart


def _grads(method, weights, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(6, 10, generator=g) * 3).requires_grad_(True)
    stages = [torch.randn(6, 8, 4, 4, generator=g).requires_grad_(True) for _ in range(3)]
    for param in method.parameters():
        param.grad = None
    method.params.alpha, method.params.beta, method.params.mu = weights
    batch = Batch(inputs=torch.zeros(6, 1), targets=torch.arange(6))
    out = method.losses(batch, Features(logits=logits, stages=stages), None, step_info())["uskd"]
    out.backward()
    return logits, stages, method.weak_head.weight.grad


@pytest.mark.parametrize("term", TERMS)
def test_each_term_sends_gradients_where_the_original_does(term):
    """Target and non-target terms train the logits only (their soft labels and the rank carry no gradient); the
    weak term trains the weak head and, through the pooled map, the student's second-to-last stage."""
    shapes = Features(logits=torch.Size([2, 10]), stages=[torch.Size([2, 8, 4, 4])] * 3)
    cls = METHODS.get("uskd")
    method = cls(cls.Params(), setup_context(shapes, None))
    logits, stages, head_grad = _grads(method, TERMS[term])
    weak = term == "weak"
    assert (logits.grad is not None and logits.grad.abs().sum() > 0) != weak
    assert (stages[1].grad is not None and stages[1].grad.abs().sum() > 0) == weak
    assert (head_grad is not None and head_grad.abs().sum() > 0) == weak
    assert stages[0].grad is None and stages[2].grad is None


def test_the_target_label_is_detached():
    """d/dz of -(1/N) sum_i p_i log s_{i,y} with p held fixed: (s - one_hot(y)) p_i / N."""
    z, y = torch.randn(5, 10, requires_grad=True), torch.tensor([1, 2, 3, 4, 5])
    uskd_loss(z, torch.randn(5, 10), y, 1.0, 0.0, 0.0).backward()
    s = z.detach().softmax(1)
    s_y = s.gather(1, y.view(5, 1))
    p = s_y**2 + 1 - (s_y**2).mean()
    torch.testing.assert_close(z.grad, (s - F.one_hot(y, 10)) * p / 5)


def test_a_teacher_free_run_trains_the_student_and_the_weak_head(tmp_path):
    regime = build_regime(tmp_path, "resnet8", None, loss={"ce": 1.0, "uskd": 1.0})
    assert regime.teacher is None
    head = regime.methods["uskd"].weak_head
    terms = assert_gradient_routing(regime, random_batch(regime))
    assert set(terms) == {"ce", "uskd"} and head.weight.grad is not None and head.weight.grad.abs().sum() > 0
