"""NKD (yzd-v/cls_KD): equal to the original code on held-out random logits and labels (tests/fixtures/
nkd_reference.json says how those numbers were made), hand-checked parts, published defaults, gradients."""
from __future__ import annotations

import json
import math

import pytest
import torch

from kdzoo.distillers import METHODS
from kdzoo.distillers.nkd import nkd_loss
from tests.conftest import REPO

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "nkd_reference.json").read_text())


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"seed{c['seed']}-c{c['c']}-T{c['temp']}")
def test_nkd_equals_the_original_code(case):
    g = torch.Generator().manual_seed(case["seed"])
    ys = torch.randn(case["n"], case["c"], generator=g, dtype=torch.float64) * case["scale"]
    yt = torch.randn(case["n"], case["c"], generator=g, dtype=torch.float64) * case["scale"]
    y = torch.randint(0, case["c"], (case["n"],), generator=g)
    assert nkd_loss(ys, yt, y, case["temp"], case["gamma"]).item() == pytest.approx(case["nkd"], rel=1e-5)


def test_nkd_by_hand_on_three_classes():
    z_s, z_t, y = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([0])
    s, t = z_s.softmax(1)[0], z_t.softmax(1)[0]
    target = -t[0] * math.log(s[0])
    non_t = torch.tensor([1.0, 0.0]).softmax(0)  # teacher's non-target logits (1, 0), renormalised
    non_s = torch.tensor([0.0, 0.0]).log_softmax(0)
    non = -1.5 * (non_t * non_s).sum()
    assert nkd_loss(z_s, z_t, y, 1.0, 1.5).item() == pytest.approx((target + non).item(), rel=1e-6)


def test_published_defaults_and_weights():
    params = METHODS.get("nkd").Params()
    assert (params.T, params.gamma) == (1.0, 1.5)
    assert METHODS.get("nkd").recipes.loss == {"ce": 1.0, "nkd": 1.0}


def test_the_target_term_detaches_the_teachers_target_probability_as_the_original():
    """The original detaches t_y only (its teacher runs without a graph anyway): with gamma 0 no gradient reaches
    the teacher's logits, and the student's gradient is that of -t_y log s_y."""
    ys, yt = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10, requires_grad=True)
    y = torch.tensor([1, 2, 3, 4])
    nkd_loss(ys, yt, y, 1.0, 0.0).backward()
    assert yt.grad is None or not yt.grad.any()
    t_y = yt.detach().softmax(1).gather(1, y.view(4, 1))
    expected = (ys.detach().softmax(1) - torch.nn.functional.one_hot(y, 10)) * t_y / 4
    torch.testing.assert_close(ys.grad, expected)
