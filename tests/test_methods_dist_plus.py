"""DIST+ (torchdistill DISTPlusLoss): equal to the original code on held-out random logits and stage maps
(tests/fixtures/dist_plus_reference.json says how those numbers were made), term by term; hand cases; the code's
sign of the channel term and the paper-style option; published defaults; the shape check; gradients that reach the
student and never the teacher."""
from __future__ import annotations

import json

import pytest
import torch

from kdzoo.distillers import METHODS
from kdzoo.distillers.dist import (
    DISTPlus,
    DISTPlusParams,
    channel_relation,
    dist_parts,
    dist_plus_loss,
    pearson_clamped,
    spatial_relation,
)
from kdzoo.errors import IncompatiblePairError
from kdzoo.models.features import Features
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

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "dist_plus_reference.json").read_text())


def _inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    n, c, ch, h = case["n"], case["c"], case["ch"], case["h"]
    zs = torch.randn(n, c, generator=g, dtype=torch.float64) * case["scale"]
    zt = torch.randn(n, c, generator=g, dtype=torch.float64) * case["scale"]
    fs = torch.randn(n, ch, h, h, generator=g, dtype=torch.float64).relu()
    ft = (fs + torch.randn(n, ch, h, h, generator=g, dtype=torch.float64)).relu()
    return zs, zt, fs, ft


def _method(shape_s, shape_t, **params) -> DISTPlus:
    return DISTPlus(DISTPlusParams(**params), setup_context(Features(stages=[torch.Size([2, *shape_s])]),
                                                            Features(stages=[torch.Size([2, *shape_t])])))


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"seed{c['seed']}-c{c['c']}-tau{c['tau']}")
def test_dist_plus_equals_the_original_code(case):
    zs, zt, fs, ft = _inputs(case)
    assert channel_relation(fs, ft).item() == pytest.approx(case["channel_relation"], rel=1e-6)
    assert spatial_relation(fs, ft).item() == pytest.approx(case["spatial_relation"], rel=1e-6)
    weights = {k: case[k] for k in ("beta", "gamma", "iota", "kappa", "tau")}
    method = _method(fs.shape[1:], ft.shape[1:], **weights)
    stem = torch.full((case["n"], 1, 2, 2), float("nan"))  # only the last stage map is read
    out = method.losses(None, Features(logits=zs, stages=[stem, fs]), Features(logits=zt, stages=[stem, ft]),
                        step_info())
    assert out["dist_plus"].item() == pytest.approx(case["dist_plus"], rel=1e-5)


def test_hand_cases_and_the_channel_terms_sign():
    g = torch.Generator().manual_seed(0)
    z, f = torch.randn(6, 10, generator=g), torch.randn(6, 8, 3, 3, generator=g)
    assert channel_relation(f, f).item() == pytest.approx(1.0, abs=1e-6)
    assert channel_relation(f, -f).item() == pytest.approx(-1.0, abs=1e-6)
    assert channel_relation(f, 3.0 * f + 2.0).item() == pytest.approx(1.0, abs=1e-6)  # Pearson: affine invariant
    assert spatial_relation(f, f).item() == pytest.approx(0.0, abs=1e-6)
    # a student equal to its teacher: DIST 0, spatial 0, and the code's channel term adds +iota * 1
    assert dist_plus_loss(z, z, f, f, 2.0, 2.0, 0.5, 1.0, 1.0).item() == pytest.approx(0.5, abs=1e-5)
    assert dist_plus_loss(z, z, f, f, 2.0, 2.0, 0.5, 1.0, 1.0, "one_minus_corr").item() == pytest.approx(0.0, abs=1e-5)


def test_the_codes_channel_term_pushes_the_correlation_down():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 5, generator=g)
    ft = torch.randn(4, 6, 2, 2, generator=g)
    for term, direction in (("corr", -1), ("one_minus_corr", 1)):
        fs = (ft + torch.randn(4, 6, 2, 2, generator=g)).requires_grad_(True)
        dist_plus_loss(z, z, fs, ft, 0.0, 0.0, 1.0, 0.0, 1.0, term).backward()
        with torch.no_grad():
            before, after = channel_relation(fs, ft), channel_relation(fs - 0.05 * fs.grad, ft)
        assert direction * (after - before).item() > 0, term


def test_without_the_feature_terms_it_is_torchdistills_dist():
    g = torch.Generator().manual_seed(2)
    zs, zt, f = torch.randn(8, 20, generator=g), torch.randn(8, 20, generator=g), torch.randn(8, 4, 2, 2, generator=g)
    inter, intra = dist_parts(zs, zt, 2.0, pearson_clamped)
    expected = 4.0 * (1.5 * inter + 0.5 * intra)
    assert dist_plus_loss(zs, zt, f, f.flip(0), 1.5, 0.5, 0.0, 0.0, 2.0).item() == pytest.approx(expected.item())


def test_published_defaults_and_recipe():
    cls = METHODS.get("dist_plus")
    p = cls.Params()
    # torchdistill configs/sample/ilsvrc2012/dist_plus: beta 2, gamma 2, iota 1, kappa 1, tau 1; weight 2
    assert (p.beta, p.gamma, p.iota, p.kappa, p.tau, p.channel_term) == (2.0, 2.0, 1.0, 1.0, 1.0, "corr")
    assert cls.recipes.loss == {"ce": 1.0, "dist_plus": 2.0}
    assert METHODS.get("dist").Params().tau == 4.0  # DIST's own defaults are untouched


def test_refuses_last_stage_maps_of_different_shapes():
    student, teacher, s_shapes, t_shapes = probed_pair("resnet8", "resnet8x4")  # 64 vs 256 channels
    with pytest.raises(IncompatiblePairError, match="same|one"):
        DISTPlus(DISTPlusParams(), setup_context(s_shapes, t_shapes, student))
    with pytest.raises(IncompatiblePairError):
        _method((8, 4, 4), (8, 2, 2))


def test_gradients_reach_the_student_only(tmp_path):
    regime = build_regime(tmp_path, "resnet8", "resnet14", {"ce": 1.0, "dist_plus": 2.0})
    terms = assert_gradient_routing(regime, random_batch(regime))
    assert set(terms) == {"ce", "dist_plus"} and torch.isfinite(terms["dist_plus"])
    assert not list(regime.methods["dist_plus"].parameters())
