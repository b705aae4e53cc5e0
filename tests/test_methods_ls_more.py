"""Logit standardization (sunshangquan/logit-standardization-KD) as an option of mlkd and ctkd: equal to that
repository's own MLKD (mdistiller/distillers/MLKD.py with logit_stand) and CTKD (CTKD/distiller_zoo/KD.py
DistillKL_logit_stand at the learned temperature) on held-out logits (tests/fixtures/ls_more_reference.json says how
the numbers were made), invariant to a shift and a scale of a student row where the original standardizes, and
written into the mlkd_ls / ctkd_ls rows as the code's README and scripts run them."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from kdzoo.core.batch import Batch, StepInfo
from kdzoo.distillers import METHODS
from kdzoo.distillers.ctkd import CTKDParams, ctkd_kd_loss
from kdzoo.distillers.kd import standardize_logits
from kdzoo.distillers.mlkd import MLKDParams, mlkd_losses
from kdzoo.errors import ConfigError
from kdzoo.models.features import Features
from tests.conftest import REPO
from tests.method_harness import setup_context

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "ls_more_reference.json").read_text())
TEMPS = [3.0, 5.0, 2.0, 6.0]  # MLKD's fixed temperatures after the first


def mlkd_inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    n, c, scale = case["n"], case["c"], case["scale"]
    s_w, s_s = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale + 3.0 for _ in range(2))
    t_w, t_s = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale - 1.0 for _ in range(2))
    y = torch.randint(0, c, (n,), generator=g)
    if case["tied"]:
        t_w = t_w[(torch.arange(n) // 3) * 3]
    return s_w, s_s, t_w, t_s, y


def ctkd_inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    ys = torch.randn(case["n"], case["c"], generator=g, dtype=torch.float64) * case["scale"] + 3.0
    yt = torch.randn(case["n"], case["c"], generator=g, dtype=torch.float64) * case["scale"] - 1.0
    return ys.requires_grad_(), yt


def build_ctkd(num_classes: int, **params):
    shapes = Features(logits=torch.Size([2, num_classes]))
    return METHODS.get("ctkd")(CTKDParams(**params), setup_context(shapes, shapes)).double()


def ctkd_loss(method, ys, yt, epoch_1based: int):
    batch = Batch(inputs=torch.zeros(len(ys), 1), targets=torch.zeros(len(ys), dtype=torch.long))
    step = StepInfo(epoch=epoch_1based - 1, epochs=240, step=0, steps_per_epoch=1)
    return method.losses(batch, Features(logits=ys), Features(logits=yt), step)["ctkd"]


def mlkd_step(params: MLKDParams, s_w, s_s, t_w, t_s, y):
    """MLKD.step_losses on a stand-in step context that serves the four logits by (network, view)."""
    logits = {("student", "x"): s_w, ("student", "strong"): s_s, ("teacher", "x"): t_w, ("teacher", "strong"): t_s}
    ctx = SimpleNamespace(features=lambda net, view: Features(logits=logits[net, view]),
                          batch=SimpleNamespace(targets_of=lambda view: y))
    shapes = Features(logits=torch.Size([2, s_w.shape[1]]))
    return METHODS.get("mlkd")(params, setup_context(shapes, shapes)).step_losses(ctx)


# Parity with the LS repository's code ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", REFERENCE["mlkd"], ids=lambda c: f"seed{c['seed']}-n{c['n']}-c{c['c']}")
def test_mlkd_with_ls_equals_the_ls_code(case):
    s_w, s_s, t_w, t_s, y = mlkd_inputs(case)
    s_w.requires_grad_()
    out = mlkd_step(MLKDParams(T=case["temp"], standardize=True), s_w, s_s, t_w, t_s, y)
    assert out["mlkd_instance"].item() == pytest.approx(case["loss_kd"], rel=1e-5)
    assert out["mlkd_batch"].item() == pytest.approx(case["loss_bc"], rel=1e-5)
    assert out["mlkd_class"].item() == pytest.approx(case["loss_cc"], rel=1e-5)
    ce = torch.nn.functional.cross_entropy(s_w, y) + out["mlkd_strong_ce"]  # its loss_ce: both views
    assert ce.item() == pytest.approx(case["loss_ce"], rel=1e-5)
    (out["mlkd_instance"] + out["mlkd_batch"] + out["mlkd_class"]).backward()
    assert s_w.grad.abs().sum().item() == pytest.approx(case["grad_s_weak_abs_sum"], rel=1e-5)
    assert s_w.grad[0, 0].item() == pytest.approx(case["grad_s_weak_00"], rel=1e-5)
    # off: the LS code's own MLKD without --logit-stand, which kdzoo's default equals
    plain = mlkd_losses(s_w.detach(), t_w, s_s, t_s, [case["temp"], *TEMPS])["instance"]
    assert plain.item() == pytest.approx(case["plain_loss_kd"], rel=1e-5)


@pytest.mark.parametrize("case", REFERENCE["ctkd"], ids=lambda c: f"seed{c['seed']}-c{c['c']}-epoch{c['epoch']}")
def test_ctkd_with_ls_loss_and_reversed_temperature_gradient_equal_the_ls_code(case):
    ys, yt = ctkd_inputs(case)
    method = build_ctkd(case["c"], t_start=case["t_start"], t_end=case["t_end"], decay_loops=case["loops"],
                        standardize=True)
    with torch.no_grad():
        method.temperature_module.raw.fill_(case["raw"])
    assert method.gradient_factor(case["epoch"] - 1) == pytest.approx(case["lambda"], abs=1e-12)
    loss = ctkd_loss(method, ys, yt, case["epoch"])
    loss.backward()
    assert loss.item() == pytest.approx(case["loss"], rel=1e-5)
    assert method.temperature_module.raw.grad.item() == pytest.approx(case["grad_raw"], rel=1e-5)
    assert ys.grad.abs().sum().item() == pytest.approx(case["grad_s_abs_sum"], rel=1e-5)
    assert ys.grad[0, 0].item() == pytest.approx(case["grad_s_00"], rel=1e-5)
    assert method.on_epoch_start(case["epoch"] - 1)["ctkd_T"] == pytest.approx(case["T"], rel=1e-6)
    off = build_ctkd(case["c"], t_start=case["t_start"], t_end=case["t_end"], decay_loops=case["loops"])
    with torch.no_grad():
        off.temperature_module.raw.fill_(case["raw"])
    assert ctkd_loss(off, ys, yt, case["epoch"]).item() == pytest.approx(case["plain_loss"], rel=1e-5)


# Invariances ---------------------------------------------------------------------------------------------------
def _row_changed(z: torch.Tensor, row: int, scale: float, shift: float) -> torch.Tensor:
    """z with one row scaled and shifted (z-scoring undoes both, up to the 1e-7 added to the std)."""
    z = z.clone()
    z[row] = z[row] * scale + shift
    return z


def test_mlkd_ls_ignores_a_shift_of_a_student_row_everywhere_and_its_scale_in_the_instance_terms():
    s_w, s_s, t_w, t_s, y = mlkd_inputs(REFERENCE["mlkd"][1])
    on = MLKDParams(T=2.0, standardize=True)
    base = mlkd_step(on, s_w, s_s, t_w, t_s, y)
    shifted = mlkd_step(on, _row_changed(s_w, 2, 1.0, 7.0), _row_changed(s_s, 5, 1.0, -4.0), t_w, t_s, y)
    scaled = mlkd_step(on, _row_changed(s_w, 2, 3.5, 0.0), _row_changed(s_s, 5, 0.25, 0.0), t_w, t_s, y)
    for term in ("mlkd_instance", "mlkd_batch", "mlkd_class"):
        assert shifted[term].item() == pytest.approx(base[term].item(), rel=1e-9), term  # softmax: shift-free
    assert scaled["mlkd_instance"].item() == pytest.approx(base["mlkd_instance"].item(), rel=1e-6)
    # the LS code leaves the relation terms on raw logits: a scale moves them, and the default moves the KLs too
    assert scaled["mlkd_batch"].item() != pytest.approx(base["mlkd_batch"].item(), rel=1e-3)
    off = MLKDParams(T=2.0)
    plain = mlkd_step(off, s_w, s_s, t_w, t_s, y)["mlkd_instance"]
    plain_scaled = mlkd_step(off, _row_changed(s_w, 2, 3.5, 0.0), s_s, t_w, t_s, y)["mlkd_instance"]
    assert plain_scaled.item() != pytest.approx(plain.item(), rel=1e-3)


def test_ctkd_ls_ignores_a_shift_and_a_scale_of_a_student_row():
    ys, yt = ctkd_inputs(REFERENCE["ctkd"][1])
    ys = ys.detach()
    on, off = build_ctkd(10, standardize=True), build_ctkd(10)
    base = ctkd_loss(on, ys, yt, 5).item()
    for scale, shift in [(1.0, 6.0), (4.0, 0.0), (0.3, -2.0)]:
        changed = _row_changed(ys, 3, scale, shift)
        assert ctkd_loss(on, changed, yt, 5).item() == pytest.approx(base, rel=1e-6)
    assert ctkd_loss(off, _row_changed(ys, 3, 4.0, 0.0), yt, 5).item() != \
        pytest.approx(ctkd_loss(off, ys, yt, 5).item(), rel=1e-3)


def test_ctkd_ls_is_kd_on_standardized_logits_at_the_learned_temperature_and_keeps_the_gradient_split():
    ys, yt = torch.randn(6, 10, dtype=torch.float64) * 4 + 2, torch.randn(6, 10, dtype=torch.float64)
    method = build_ctkd(10, standardize=True, t_start=2.0)
    loss = ctkd_loss(method, ys.requires_grad_(), yt, 12)  # lambda -1 past the loops
    loss.backward()
    raw = torch.ones(1, dtype=torch.float64, requires_grad=True)
    plain_ys = ys.detach().clone().requires_grad_()
    want = ctkd_kd_loss(standardize_logits(plain_ys), standardize_logits(yt), 2.0 + 20.0 * torch.sigmoid(raw))
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)
    torch.testing.assert_close(ys.grad, plain_ys.grad)  # the student: the plain gradient through the z-score
    torch.testing.assert_close(method.temperature_module.raw.grad, -raw.grad)  # the temperature: reversed


# Published settings ----------------------------------------------------------------------------------------------
def test_ls_is_off_by_default_and_the_rows_follow_the_ls_readme_and_scripts():
    mlkd, ctkd = METHODS.get("mlkd"), METHODS.get("ctkd")
    assert mlkd.Params().standardize is False and ctkd.Params().standardize is False
    # MLKD+Ours: --logit-stand --base-temp 2 --kd-weight 9 (KD_WEIGHT weighs all three terms, CE_WEIGHT 0.1 both)
    assert mlkd.recipes.variants == {"mlkd_ls": {"ce": 0.1, "mlkd_strong_ce": 0.1, "mlkd_instance": 9.0,
                                                 "mlkd_batch": 9.0, "mlkd_class": 9.0}}
    assert mlkd.recipes.variant_params == {"mlkd_ls": {"T": 2.0, "standardize": True}}
    # CTKD+Ours: run_cifar_distill.sh -r 0.1 -a 9 -b 0 --have_mlp 1 (global), its logs' floor temperature 2
    assert ctkd.recipes.variants == {"ctkd_ls": {"ce": 0.1, "ctkd": 9.0}}
    assert ctkd.recipes.variant_params == {"ctkd_ls": {"t_start": 2.0, "standardize": True}}
    for name, params in {**mlkd.recipes.variant_params, **ctkd.recipes.variant_params}.items():
        cls = mlkd if name.startswith("mlkd") else ctkd
        cls.Params(**params)  # the rows' parameters exist
    with pytest.raises(ConfigError, match="standardize"):
        build_ctkd(10, base="dkd", standardize=True)  # the LS code standardizes CTKD's KD only

