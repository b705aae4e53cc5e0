"""SRD (torchdistill SRDLoss + SRDModelWrapper): equal to the original code on held-out random pooled features,
logits and projector weights (tests/fixtures/srd_reference.json says how those numbers were made), including the
normalisers' running statistics; a hand-computed case; published defaults; batch-statistics normalisation of both
sides; gradients that reach the student and the projector but never the teacher."""
from __future__ import annotations

import json
import math

import pytest
import torch

from kdzoo.distillers import METHODS
from kdzoo.distillers.srd import SRD, SRDParams, srd_loss
from kdzoo.models.features import Features
from tests.conftest import REPO
from tests.method_harness import (  # noqa: F401 - one_thread: autouse fixture
    assert_gradient_routing,
    build_regime,
    one_thread,
    random_batch,
    setup_context,
    step_info,
)

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "srd_reference.json").read_text())


def _method(ds: int, dt: int, **params) -> SRD:
    return SRD(SRDParams(**params), setup_context(Features(pooled=torch.Size([2, ds])),
                                                  Features(pooled=torch.Size([2, dt]))))


def _inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    n, ds, dt, c = case["n"], case["ds"], case["dt"], case["c"]
    fs = torch.randn(n, ds, generator=g, dtype=torch.float64).relu()
    ft = torch.randn(n, dt, generator=g, dtype=torch.float64).relu()
    zs = torch.randn(n, c, generator=g, dtype=torch.float64) * case["scale"]
    zt = torch.randn(n, c, generator=g, dtype=torch.float64) * case["scale"]
    w = torch.randn(dt, ds, generator=g, dtype=torch.float64) / ds**0.5
    b = torch.randn(dt, generator=g, dtype=torch.float64) * 0.1
    return fs, ft, zs, zt, w, b


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"seed{c['seed']}-p{c['exponent']}-T{c['temperature']}")
def test_srd_equals_the_original_code(case):
    fs, ft, zs, zt, w, b = _inputs(case)
    method = _method(case["ds"], case["dt"], exponent=case["exponent"], T=case["temperature"]).double().train()
    with torch.no_grad():
        method.projector.weight.copy_(w)
        method.projector.bias.copy_(b)
    out = method.losses(None, Features(pooled=fs, logits=zs), Features(pooled=ft, logits=zt), step_info())
    assert out["srd"].item() == pytest.approx(case["srd"], rel=1e-5)
    # both normalisers ran in training mode and moved their running statistics as the original's did
    assert method.student_norm.running_mean[0].item() == pytest.approx(case["s_running_mean0"], rel=1e-5)
    assert method.teacher_norm.running_var[0].item() == pytest.approx(case["t_running_var0"], rel=1e-5)


def test_srd_by_hand():
    """|h_s - h_t| = (2, 1): 2 log(2^4 + 1^4) = 2 log 17; logits (0, 0) against (log 3, 0): KL = 3/4 log 3/2 +
    1/4 log 1/2 per row, the same for both rows (batch mean)."""
    h_s, h_t = torch.tensor([[2.0], [1.0]]), torch.zeros(2, 1)
    zs, zt = torch.zeros(2, 2), torch.tensor([[math.log(3.0), 0.0]] * 2)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert srd_loss(h_s, h_t, zs, zt).item() == pytest.approx(2 * math.log(17.0) + kl, rel=1e-6)
    # exponent 2 and T 2: no T^2 on the KL
    p_t = torch.tensor([math.sqrt(3.0), 1.0]) / (math.sqrt(3.0) + 1.0)
    kl2 = float((p_t * (p_t / 0.5).log()).sum())
    assert srd_loss(h_s, h_t, zs, zt, exponent=2.0, temperature=2.0).item() == pytest.approx(
        2 * math.log(5.0) + kl2, rel=1e-6)


def test_published_defaults_and_recipe():
    cls = METHODS.get("srd")
    assert (cls.Params().exponent, cls.Params().T) == (4.0, 1.0)  # torchdistill's SRD config: exponent 4, T 1
    assert cls.recipes.loss == {"ce": 1.0, "srd": 1.0}
    assert not cls.recipes.variants and not cls.recipes.variant_params


def test_adapters_structure():
    method = _method(64, 256)
    assert (method.projector.in_features, method.projector.out_features) == (64, 256)
    assert method.projector.bias is not None
    for norm in (method.student_norm, method.teacher_norm):
        assert norm.num_features == 256 and norm.eps == 1e-4 and not norm.affine
    assert [n for n, _ in method.named_parameters()] == ["projector.weight", "projector.bias"]


def test_both_sides_are_normalised_with_the_batch_statistics():
    """Rescaling and shifting the teacher's pooled feature per dimension leaves the loss unchanged (up to BN's eps),
    which holds only while the teacher's normaliser uses the batch's statistics."""
    g = torch.Generator().manual_seed(7)
    fs, ft = torch.randn(16, 8, generator=g).relu(), torch.randn(16, 8, generator=g).relu() + 0.5
    zs, zt = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    torch.manual_seed(0)
    method = _method(8, 8).train()
    base = method.losses(None, Features(pooled=fs, logits=zs), Features(pooled=ft, logits=zt), step_info())["srd"]
    scale = torch.linspace(2.0, 9.0, 8)
    moved = method.losses(None, Features(pooled=fs, logits=zs), Features(pooled=ft * scale - 3.0, logits=zt),
                          step_info())["srd"]
    assert moved.item() == pytest.approx(base.item(), rel=1e-4)


def test_no_gradient_reaches_the_teachers_features():
    method = _method(6, 6).train()
    fs, ft = torch.randn(8, 6, requires_grad=True), torch.randn(8, 6, requires_grad=True)
    zs, zt = torch.randn(8, 5, requires_grad=True), torch.randn(8, 5, requires_grad=True)
    method.losses(None, Features(pooled=fs, logits=zs), Features(pooled=ft, logits=zt), step_info())["srd"].backward()
    assert fs.grad.abs().sum() > 0 and zs.grad.abs().sum() > 0 and method.projector.weight.grad.abs().sum() > 0
    assert ft.grad is None and zt.grad is None


def test_gradients_reach_the_student_and_the_projector_only(tmp_path):
    regime = build_regime(tmp_path, "resnet8", "resnet8x4", {"ce": 1.0, "srd": 1.0})
    terms = assert_gradient_routing(regime, random_batch(regime))
    assert set(terms) == {"ce", "srd"} and torch.isfinite(terms["srd"])
    method = regime.methods["srd"]
    assert method.projector.weight.shape == (256, 64) and method.projector.weight.grad.abs().sum() > 0
