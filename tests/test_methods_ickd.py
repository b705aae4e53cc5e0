"""ICKD (torchdistill ChSimLoss + ChannelSimilarityEmbed; ADLab-AutoDrive/ICKD's CIFAR code): equal to the original
code on held-out random maps and embed weights (tests/fixtures/ickd_reference.json says how those numbers were made),
a hand-computed case, published defaults and recipes, the embed's structure, and gradients that reach the student and
the embed but never the teacher."""
from __future__ import annotations

import json
import math

import pytest
import torch

from kdzoo.distillers import METHODS
from kdzoo.distillers.ickd import CIFAR100_PARAMS, ICKD, ICKDParams, ickd_loss
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.features import FeatureModel, Features, Needs
from tests.conftest import REPO
from tests.method_harness import (  # noqa: F401 - one_thread: autouse fixture
    assert_gradient_routing,
    build_regime,
    one_thread,
    probed_pair,
    random_batch,
    setup_context,
    step_info,
)

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "ickd_reference.json").read_text())


def _method(cs: int, ct: int, hs: int, ht: int, **params) -> ICKD:
    shapes = lambda c, h: Features(stages=[torch.Size([2, c, h, h])])  # noqa: E731
    return ICKD(ICKDParams(**params), setup_context(shapes(cs, hs), shapes(ct, ht)))


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"seed{c['seed']}-{c['origin']}")
def test_ickd_equals_the_original_code(case):
    g = torch.Generator().manual_seed(case["seed"])
    n, cs, ct, k = case["n"], case["cs"], case["ct"], case["kernel"]
    s = torch.randn(n, cs, case["hs"], case["hs"], generator=g, dtype=torch.float64)
    t = torch.randn(n, ct, case["ht"], case["ht"], generator=g, dtype=torch.float64).relu()
    w = torch.randn(ct, cs, k, k, generator=g, dtype=torch.float64) * case["wscale"]
    params = {} if case["origin"] == "torchdistill" else dict(CIFAR100_PARAMS)  # torchdistill's are the defaults
    method = _method(cs, ct, case["hs"], case["ht"], **params).double().train()
    with torch.no_grad():
        method.embed.conv.weight.copy_(w)
    out = method.losses(None, Features(stages=[s]), Features(stages=[t]), step_info())
    assert out["ickd"].item() == pytest.approx(case["ickd"], rel=1e-5)


def test_ickd_by_hand():
    """Student channels (1, 0), (0, 1): Gram I. Teacher channels (1, 1) twice: rows (1, 1) / sqrt 2. Squared
    difference summed: 2 ((1 - 1/sqrt 2)^2 + 1/2) = 4 - 2 sqrt 2, over C B^p."""
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    t = torch.ones(1, 2, 1, 2)
    assert ickd_loss(s, t).item() == pytest.approx((4 - 2 * math.sqrt(2)) / 2, rel=1e-6)
    s2, t2 = s.repeat(2, 1, 1, 1), t.repeat(2, 1, 1, 1)
    assert ickd_loss(s2, t2, batch_power=2).item() == pytest.approx(2 * (4 - 2 * math.sqrt(2)) / (2 * 4), rel=1e-6)
    assert ickd_loss(s2, t2, batch_power=1).item() == pytest.approx(2 * (4 - 2 * math.sqrt(2)) / (2 * 2), rel=1e-6)


def test_rows_are_normalised_so_the_scale_of_a_map_does_not_matter():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(4, 8, 3, 3, generator=g), torch.randn(4, 8, 5, 5, generator=g).relu()  # sizes may differ
    base = ickd_loss(s, t)
    torch.testing.assert_close(ickd_loss(s * 7.0, t * 0.1), base)
    assert ickd_loss(t.flip(1)[:, :, :3, :3], t[:, :, :3, :3]).item() > 0 < base.item()
    assert ickd_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_published_defaults_and_recipes():
    cls = METHODS.get("ickd")
    assert (cls.Params().kernel_size, cls.Params().batch_power, cls.Params().stage) == (3, 2, -1)  # torchdistill
    assert cls.recipes.loss == {"ce": 1.0, "ickd": 2.5}  # ICKD Cifar100 README: -r 1 -a 0 -b 2.5
    assert cls.recipes.variants == {"ickd_kd": {"ce": 1.0, "kd": 1.0, "ickd": 2.5}}  # -a 1 -b 2.5
    assert cls.recipes.variant_params == {"ickd": {"kernel_size": 1, "batch_power": 1},
                                          "ickd_kd": {"kernel_size": 1, "batch_power": 1}}


def test_embed_maps_the_students_last_stage_to_the_teachers_channels():
    student, teacher, s_shapes, t_shapes = probed_pair("resnet8", "resnet8x4")
    method = ICKD(ICKDParams(), setup_context(s_shapes, t_shapes, student))
    conv = method.embed.conv
    assert (conv.in_channels, conv.out_channels) == (s_shapes.stages[-1][1], t_shapes.stages[-1][1]) == (64, 256)
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1) and conv.bias is None
    assert method.embed.bn.num_features == 256 and method.embed.bn.affine
    one = ICKD(ICKDParams(**CIFAR100_PARAMS), setup_context(s_shapes, t_shapes, student)).embed.conv
    assert one.kernel_size == (1, 1) and one.padding == (0, 0)
    with pytest.raises(IncompatiblePairError, match="out of range"):
        ICKD(ICKDParams(stage=9), setup_context(s_shapes, t_shapes, student))


def test_the_last_stage_map_is_read():
    method = _method(4, 6, 2, 2).train()
    stem = torch.full((3, 1, 2, 2), math.nan)  # any other stage map is ignored
    s, t = torch.randn(3, 4, 2, 2), torch.randn(3, 6, 2, 2)
    out = method.losses(None, Features(stages=[stem, s]), Features(stages=[stem, t]), step_info())
    assert torch.isfinite(out["ickd"])


def test_gradients_reach_the_student_and_the_embed_only(tmp_path):
    regime = build_regime(tmp_path, "resnet8", "resnet8x4", {"ce": 1.0, "ickd": 2.5}, methods={"ickd": CIFAR100_PARAMS})
    terms = assert_gradient_routing(regime, random_batch(regime))
    assert set(terms) == {"ce", "ickd"} and terms["ickd"].item() > 0
    embed = regime.methods["ickd"].embed
    assert embed.conv.kernel_size == (1, 1) and embed.conv.weight.grad.abs().sum() > 0
    # the ICKD term alone trains the student's body (up to its last stage), not its classifier
    student = regime.student
    student.zero_grad(set_to_none=True)
    features = FeatureModel(student, Needs(stages=True))
    batch = random_batch(regime, seed=3)
    regime.methods["ickd"].losses(batch, features(batch.inputs), regime.teacher(batch.inputs),
                                  step_info())["ickd"].backward()
    features.remove_hooks()
    grads = {name: p.grad for name, p in student.named_parameters()}
    assert all(g is None for name, g in grads.items() if name.startswith("fc."))
    assert all(g is not None and g.abs().sum() > 0 for name, g in grads.items()
               if name.endswith("conv1.weight"))
