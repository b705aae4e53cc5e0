"""CAT-KD (GzyAftermath/CAT-KD): equal to the original CAT_KD distiller on held-out random maps and classifiers
(tests/fixtures/catkd_reference.json says how those numbers were made), hand-checked CAMs, pooling, normalisation
and binarisation, published settings, refusals, and gradients that reach only the student."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from kdzoo.core.batch import Batch
from kdzoo.data import image_info
from kdzoo.distillers import METHODS
from kdzoo.distillers.catkd import binarize, cat_loss, class_activation_maps, pools_last_stage
from kdzoo.errors import IncompatiblePairError
from kdzoo.models import create_model
from kdzoo.models.features import Features
from tests.conftest import REPO
from tests.method_harness import (
    assert_gradient_routing,
    build_regime,
    probed_pair,
    random_batch,
    setup_context,
    step_info,
)

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "catkd_reference.json").read_text())
PAIRS: dict = {}


def _pair(student, teacher):
    if (student, teacher) not in PAIRS:
        PAIRS[(student, teacher)] = probed_pair(student, teacher)
    return PAIRS[(student, teacher)]


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"seed{c['seed']}-R{c['resolution']}")
def test_cat_loss_equals_the_original_code(case):
    g = torch.Generator().manual_seed(case["seed"])
    fs = torch.randn(case["n"], case["cs"], case["hs"], case["hs"], generator=g, dtype=torch.float64)
    ft = torch.randn(case["n"], case["ct"], case["ht"], case["ht"], generator=g, dtype=torch.float64)
    ws = torch.randn(case["k"], case["cs"], generator=g, dtype=torch.float64) * 0.1
    wt = torch.randn(case["k"], case["ct"], generator=g, dtype=torch.float64) * 0.1
    t_cams = class_activation_maps(ft, wt)
    t_cams = binarize(t_cams) if case["binarize"] else t_cams
    loss = cat_loss(class_activation_maps(fs, ws), t_cams, case["resolution"], case["normalize"])
    assert loss.item() == pytest.approx(case["cat"], rel=1e-5)


def test_cams_pooling_and_normalisation_by_hand():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # (1, 2, 2, 2)
    w = torch.tensor([[1.0, 10.0], [-1.0, 0.0]])
    cams = class_activation_maps(f, w, bias=torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(cams[0, 0], torch.tensor([[1.5, 12.5], [3.5, 14.5]]))
    torch.testing.assert_close(cams[0, 1], -f[0, 0])
    s, t = torch.zeros(1, 2, 2, 2), cams - torch.tensor([0.5, 0.0]).view(1, 2, 1, 1)
    # R 1: the pooled CAMs are the bias-free logits (7.5, -2.5); the MSE over the two classes
    assert cat_loss(s, t, 1, False).item() == pytest.approx((7.5**2 + 2.5**2) / 2)
    # normalised over the R x R cells: a 1 x 1 map becomes its sign
    assert cat_loss(s + 1.0, t, 1, True).item() == pytest.approx((0.0 + 2.0**2) / 2)


def test_binarisation_by_hand():
    cam = torch.tensor([[[[1.0, -3.0], [0.5, 2.0]]]])  # mean |x| = 1.625
    torch.testing.assert_close(binarize(cam), torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]]))


def test_published_settings():
    cls = METHODS.get("catkd")
    p = cls.Params()
    assert (p.resolution, p.normalize, p.binarize, p.student_bias) == (2, False, False, False)
    assert cls.recipes.loss == {"ce": 1.0, "catkd": 15.0}
    assert cls.pair_overrides("resnet32x4", "ShuffleV1") == {
        "loss": {"catkd": 600.0}, "methods": {"catkd": {"resolution": 4, "normalize": True}}}
    assert cls.pair_overrides("resnet56", "resnet20")["loss"] == {"catkd": 0.7}
    assert cls.pair_overrides("resnet8", "resnet8") == {}


def _method(student="resnet8", teacher="resnet14", info=None, **params):
    s_model, t_model, s_shapes, t_shapes = _pair(student, teacher)
    ctx = dataclasses.replace(setup_context(s_shapes, t_shapes, s_model), teacher=t_model, info=info)
    return METHODS.get("catkd")(METHODS.get("catkd").Params(**params), ctx)


def test_gradients_reach_the_student_map_and_head_never_the_teacher():
    method = _method()
    s_head, t_head = method.student_head, method.teacher_head.module
    assert not list(method.parameters())  # both heads are held, not registered
    s = Features(stages=[None, None, None, torch.randn(4, 64, 8, 8, requires_grad=True)])
    t = Features(stages=[None, None, None, torch.randn(4, 64, 8, 8, requires_grad=True)])
    batch = Batch(inputs=torch.zeros(4, 3, 32, 32), targets=torch.arange(4))
    loss = method.losses(batch, s, t, step_info())["catkd"]
    loss.backward()
    assert s.stages[3].grad.abs().sum() > 0 and s_head.weight.grad.abs().sum() > 0
    assert s_head.bias.grad is None and t.stages[3].grad is None and t_head.weight.grad is None
    with_bias = _method(student_bias=True).losses(batch, s, t, step_info())["catkd"]
    expected = cat_loss(class_activation_maps(s.stages[3], s_head.weight, s_head.bias),
                        class_activation_maps(t.stages[3], t_head.weight), 2, False)
    assert with_bias.item() == pytest.approx(expected.item()) and with_bias.item() != pytest.approx(loss.item())
    s_head.zero_grad()


def test_probe_tells_which_models_pool_their_last_stage():
    resnet, wrn = create_model("resnet8", num_classes=10), create_model("wrn_16_1", num_classes=10)
    wrn.train()
    assert pools_last_stage(resnet, (3, 32, 32)) is True
    assert pools_last_stage(wrn, (3, 32, 32)) is False  # BN + ReLU follow block3
    assert wrn.training and all(m.training for m in wrn.modules())  # its modes back


def test_pairs_without_cams_of_the_last_stage_are_refused():
    info = image_info("synthetic", 10, 3, 32, (0.0,) * 3, (1.0,) * 3)
    _method(info=info)  # resnet8 <- resnet14: both pool their last stage
    with pytest.raises(IncompatiblePairError, match="teacher .* does not pool"):
        _method("resnet8", "wrn_16_1", info=info)
    with pytest.raises(IncompatiblePairError, match="student's classifier"):
        _method("ShuffleV2", "resnet14")  # its last stage (464 wide) feeds a 1x1 conv to 1024


def test_cat_kd_in_a_real_regime(tmp_path):
    r = build_regime(tmp_path, "resnet8", "resnet14", {"ce": 1.0, "catkd": 15.0}, n_train=20)
    terms = assert_gradient_routing(r, random_batch(r))
    assert set(terms) == {"ce", "catkd"} and float(terms["catkd"].detach()) > 0
