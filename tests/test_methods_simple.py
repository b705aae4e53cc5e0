"""FitNet, AT, SP, CC, PKT, RKD and NST: losses against independent hand computations, adapter shapes, gradient
routing through a real regime, and one short digits epoch through the CLI per method and pair."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kdzoo.bench.anchors import PAIRS
from kdzoo.distillers.at import at_loss
from kdzoo.distillers.cc import CC, CCParams, cc_loss
from kdzoo.distillers.fitnet import ConvReg, FitNet, FitNetParams, hint_loss
from kdzoo.distillers.nst import nst_loss
from kdzoo.distillers.pkt import pkt_loss
from kdzoo.distillers.rkd import rkd_angle_loss, rkd_distance_loss, rkd_loss
from kdzoo.distillers.sp import sp_loss
from kdzoo.errors import IncompatiblePairError
from kdzoo.models import create_model
from kdzoo.models.features import Features
from kdzoo.models.probe import probe_shapes
from tests.method_harness import (
    assert_gradient_routing,
    build_regime,
    pool_pair_np,
    random_batch,
    run_digits,
    setup_context,
)

METHODS = ["fitnet", "at", "sp", "cc", "pkt", "rkd", "nst"]
RECIPE = {"fitnet": 100.0, "at": 1000.0, "sp": 3000.0, "cc": 0.02, "pkt": 30000.0, "rkd": 1.0, "nst": 50.0}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here: on a loaded 2-core machine two OpenMP threads spin against each other and
    ShuffleV1's many small convolutions run some 50x slower. Restored for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


# Independent references (loops over the definitions) -------------------------------------------------------------
def _at_ref(g_s, g_t, p=2.0) -> float:
    total = 0.0
    for f_s, f_t in zip(g_s, g_t):
        f_s, f_t = _np(f_s), _np(f_t)
        f_s, f_t = pool_pair_np(f_s, f_t)
        b = f_s.shape[0]
        sq = 0.0
        for i in range(b):
            a_s = (f_s[i] ** p).mean(axis=0).reshape(-1)
            a_t = (f_t[i] ** p).mean(axis=0).reshape(-1)
            a_s = a_s / max(math.sqrt(sum(v * v for v in a_s)), 1e-12)
            a_t = a_t / max(math.sqrt(sum(v * v for v in a_t)), 1e-12)
            sq += sum((x - y) ** 2 for x, y in zip(a_s, a_t))
        total += sq / (b * f_s.shape[-1] * f_s.shape[-1])
    return total


def _sp_ref(f_s, f_t) -> float:
    def gram(f):
        flat = _np(f).reshape(f.shape[0], -1)
        b = flat.shape[0]
        g = [[float(np.dot(flat[i], flat[j])) for j in range(b)] for i in range(b)]
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in g]

    g_s, g_t = gram(f_s), gram(f_t)
    b = len(g_s)
    return sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def _pkt_ref(f_s, f_t, eps=1e-7) -> float:
    def probs(f):
        rows = _np(f)
        rows = [r / (math.sqrt(sum(v * v for v in r)) + eps) for r in rows]
        b = len(rows)
        sim = [[(float(np.dot(rows[i], rows[j])) + 1) / 2 for j in range(b)] for i in range(b)]
        return [[v / sum(row) for v in row] for row in sim]

    p_s, p_t = probs(f_s), probs(f_t)
    b = len(p_s)
    return sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps))
               for i in range(b) for j in range(b)) / b**2


def _smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def _rkd_ref(e_s, e_t) -> tuple[float, float]:
    def dists(e):
        e = _np(e)
        b = len(e)
        d = [[0.0 if i == j else math.sqrt(sum((e[i] - e[j]) ** 2)) for j in range(b)] for i in range(b)]
        positive = [v for row in d for v in row if v > 0]
        mean = sum(positive) / len(positive)
        return [[v / mean for v in row] for row in d]

    def angles(e):
        e = _np(e)
        b = len(e)

        def unit(i, j):
            v = e[j] - e[i]
            n = math.sqrt(sum(v * v))
            return v / n if n > 0 else v * 0

        return [float(np.dot(unit(i, j), unit(i, k))) for i in range(b) for j in range(b) for k in range(b)]

    d_s, d_t = dists(e_s), dists(e_t)
    b = len(d_s)
    dist = sum(_smooth_l1(d_s[i][j] - d_t[i][j]) for i in range(b) for j in range(b)) / b**2
    a_s, a_t = angles(e_s), angles(e_t)
    angle = sum(_smooth_l1(x - y) for x, y in zip(a_s, a_t)) / len(a_s)
    return dist, angle


def _nst_ref(g_s, g_t) -> float:
    total = 0.0
    for f_s, f_t in zip(g_s, g_t):
        f_s, f_t = _np(f_s), _np(f_t)
        f_s, f_t = pool_pair_np(f_s, f_t)
        b = f_s.shape[0]
        for n in range(b):
            s = [c.reshape(-1) / math.sqrt((c**2).sum()) for c in f_s[n]]
            t = [c.reshape(-1) / math.sqrt((c**2).sum()) for c in f_t[n]]

            def k_mean(a, c):
                return sum(float(np.dot(x, y)) ** 2 for x in a for y in c) / (len(a) * len(c))

            total += (k_mean(t, t) + k_mean(s, s) - 2 * k_mean(s, t)) / b
    return total


# FitNet -----------------------------------------------------------------------------------------------------------
def test_hint_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    expected = sum((x - y) ** 2 for x, y in zip(_np(a).reshape(-1), _np(b).reshape(-1))) / a.numel()
    assert hint_loss(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert hint_loss(torch.ones(1, 1, 1, 2), torch.tensor([[[[3.0, -1.0]]]])).item() == pytest.approx(4.0)  # (4 + 4) / 2


def test_fitnet_loss_is_mse_of_the_regressed_student_map():
    s = Features(stages=[torch.Size([2, 4, 4, 4])] * 3)
    t = Features(stages=[torch.Size([2, 6, 4, 4]), torch.Size([2, 6, 4, 4]), torch.Size([2, 5, 2, 2])])
    method = FitNet(FitNetParams(), setup_context(s, t)).eval()
    g = torch.Generator().manual_seed(3)
    f_s = torch.randn(2, 4, 4, 4, generator=g)
    f_t = torch.randn(2, 5, 2, 2, generator=g)
    got = method.losses(None, Features(stages=[None, None, f_s]), Features(stages=[None, None, f_t]), None)
    regressed = _np(method.regressor(f_s))
    expected = float(((regressed - _np(f_t)) ** 2).mean())
    assert got["fitnet"].item() == pytest.approx(expected, rel=1e-5)


def test_convreg_follows_the_repdistiller_rule():
    def reg(s, t):
        return ConvReg(torch.Size([2, 8, s, s]), torch.Size([2, 16, t, t])).conv

    down = reg(16, 8)
    assert isinstance(down, nn.Conv2d) and down.kernel_size == (3, 3) and down.stride == (2, 2)
    up = reg(8, 16)
    assert isinstance(up, nn.ConvTranspose2d) and up.kernel_size == (4, 4) and up.stride == (2, 2)
    assert reg(8, 8).kernel_size == (1, 1) and reg(7, 4).kernel_size == (4, 4)
    # where RepDistiller errors (student smaller, not half): resize to the teacher's size, then a 1x1 conv
    for s, t in ((1, 4), (4, 7), (3, 8)):
        module = ConvReg(torch.Size([2, 8, s, s]), torch.Size([2, 16, t, t]))
        assert module.conv.kernel_size == (1, 1) and module.resize == (t, t)
        assert module(torch.randn(2, 8, s, s)).shape == (2, 16, t, t)


_SHAPES: dict = {}


def _zoo_shapes(arch: str, size: int, channels: int) -> Features:
    key = (arch, size, channels)
    if key not in _SHAPES:
        with torch.device("meta"):  # the real zoo model, without allocating or initialising its weights
            model = create_model(arch, num_classes=100, in_channels=channels)
        _SHAPES[key] = probe_shapes(model, None, torch.zeros(2, channels, size, size, device="meta"))
    return _SHAPES[key]


@pytest.mark.parametrize("size,channels", [(32, 3), (28, 1), (8, 1)])
@pytest.mark.parametrize("pair", list(PAIRS.values()), ids=lambda p: f"{p[0]}-{p[1]}")
def test_fitnet_regressor_output_matches_the_teacher_map(pair, size, channels):
    teacher, student = pair
    t, s = _zoo_shapes(teacher, size, channels), _zoo_shapes(student, size, channels)
    layers = [2] if size == 32 else range(min(len(s.stages), len(t.stages)))  # the default everywhere; all on small
    for layer in layers:
        with torch.device("meta"):  # shapes only: the regressor runs on meta tensors
            method = FitNet(FitNetParams(hint_layer=layer), setup_context(s, t))
            out = method.regressor(torch.zeros(s.stages[layer]))
        assert out.shape == t.stages[layer], (layer, s.stages[layer], t.stages[layer])


def test_fitnet_rejects_a_hint_layer_out_of_range():
    shapes = Features(stages=[torch.Size([2, 4, 8, 8])] * 4)
    with pytest.raises(IncompatiblePairError, match="hint_layer"):
        FitNet(FitNetParams(hint_layer=4), setup_context(shapes, shapes))


# AT ---------------------------------------------------------------------------------------------------------------
def test_at_hand_computable_case():
    f_s = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # a = [.5, 0, 0, .5] -> [1,0,0,1]/sqrt2
    f_t = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # a = [.5] * 4 -> [.5] * 4
    # mean((a_s - a_t)^2) = (2 - 2 <a_s, a_t>) / 4 = (2 - sqrt2) / 4
    assert at_loss([f_s], [f_t]).item() == pytest.approx((2 - math.sqrt(2)) / 4, rel=1e-6)


def test_at_matches_independent_computation_with_pooling():
    g = torch.Generator().manual_seed(1)
    g_s = [torch.rand(3, 4, 4, 4, generator=g), torch.rand(3, 5, 2, 2, generator=g), torch.rand(3, 2, 2, 2, generator=g)]
    g_t = [torch.rand(3, 6, 4, 4, generator=g), torch.rand(3, 3, 4, 4, generator=g)]  # zip: the shortest wins
    assert at_loss(g_s, g_t).item() == pytest.approx(_at_ref(g_s, g_t), rel=1e-5)


def test_at_of_identical_maps_is_zero():
    maps = [torch.rand(4, 8, 8, 8), torch.rand(4, 16, 4, 4)]
    assert at_loss(maps, [m.clone() for m in maps]).item() == 0.0


# SP ---------------------------------------------------------------------------------------------------------------
def test_sp_hand_computable_case():
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)  # G_s = I
    f_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 2, 1, 1)  # G_t rows = [1, 1] / sqrt2
    # (2 (1 - 1/sqrt2)^2 + 2 * 1/2) / 4 = 1 - sqrt2 / 2
    assert sp_loss(f_s, f_t).item() == pytest.approx(1 - math.sqrt(2) / 2, rel=1e-6)


def test_sp_matches_independent_computation():
    g = torch.Generator().manual_seed(2)
    f_s, f_t = torch.randn(5, 3, 2, 2, generator=g), torch.randn(5, 7, 4, 4, generator=g)
    assert sp_loss(f_s, f_t).item() == pytest.approx(_sp_ref(f_s, f_t), rel=1e-5)


def test_sp_is_invariant_to_a_spatial_permutation_of_both_maps():
    g = torch.Generator().manual_seed(4)
    f_s, f_t = torch.randn(6, 4, 4, 4, generator=g), torch.randn(6, 8, 4, 4, generator=g)
    perm = torch.randperm(16, generator=g)

    def permute(f):
        return f.flatten(2)[:, :, perm].reshape(f.shape)

    assert not torch.equal(permute(f_s), f_s)
    assert sp_loss(permute(f_s), permute(f_t)).item() == pytest.approx(sp_loss(f_s, f_t).item(), rel=1e-5)


# CC ---------------------------------------------------------------------------------------------------------------
def test_cc_hand_computable_case():
    e_s = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]])
    e_t = torch.tensor([[0.0, 4.0], [0.0, 0.0], [0.0, 0.0]])  # d = [[1, 2], [3, 4], [0, 1]]
    assert cc_loss(e_s, e_t).item() == pytest.approx((1 * 3 + 2 * 4 + 3 * 0 + 4 * 1) / 2)
    assert cc_loss(e_s[:1], e_t[:1]).item() == 0.0  # a batch of one has no consecutive pair


def test_cc_embeds_are_linear_and_unnormalised():
    method = CC(CCParams(feat_dim=3), setup_context(Features(pooled=torch.Size([2, 4])), Features(pooled=torch.Size([2, 5]))))
    g = torch.Generator().manual_seed(5)
    f_s, f_t = torch.randn(4, 4, generator=g), torch.randn(4, 5, generator=g)
    w_s, b_s = _np(method.embed_s.linear.weight), _np(method.embed_s.linear.bias)
    w_t, b_t = _np(method.embed_t.linear.weight), _np(method.embed_t.linear.bias)
    e_s, e_t = _np(f_s) @ w_s.T + b_s, _np(f_t) @ w_t.T + b_t
    d = np.abs(e_s - e_t)
    expected = sum(sum(d[i, c] * d[i + 1, c] for c in range(3)) for i in range(3)) / 3
    got = method.losses(None, Features(pooled=f_s), Features(pooled=f_t), None)["cc"]
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert [p.shape for p in method.parameters()] == [(3, 4), (3,), (3, 5), (3,)]


# PKT --------------------------------------------------------------------------------------------------------------
def test_pkt_matches_independent_computation():
    g = torch.Generator().manual_seed(6)
    f_s, f_t = torch.randn(5, 4, generator=g), torch.randn(5, 9, generator=g)
    assert pkt_loss(f_s, f_t).item() == pytest.approx(_pkt_ref(f_s, f_t), rel=1e-4)


def test_pkt_hand_computable_case():
    # orthogonal student rows: similarities [[1, .5], [.5, 1]] -> P_s rows [2/3, 1/3]; parallel teacher rows: P_t = .5
    f_s, f_t = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    expected = (2 * 0.5 * math.log(0.5 / (2 / 3)) + 2 * 0.5 * math.log(0.5 / (1 / 3))) / 4
    assert pkt_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-5)
    assert pkt_loss(f_t, f_t.clone()).item() == pytest.approx(0.0, abs=1e-7)


# RKD --------------------------------------------------------------------------------------------------------------
def test_rkd_matches_independent_computation():
    g = torch.Generator().manual_seed(7)
    e_s, e_t = torch.randn(5, 3, generator=g), torch.randn(5, 6, generator=g) * 4
    dist, angle = _rkd_ref(e_s, e_t)
    assert rkd_distance_loss(e_s, e_t).item() == pytest.approx(dist, rel=1e-5)
    assert rkd_angle_loss(e_s, e_t).item() == pytest.approx(angle, rel=1e-5)
    assert rkd_loss(e_s, e_t).item() == pytest.approx(25 * dist + 50 * angle, rel=1e-5)
    assert rkd_loss(e_s, e_t, w_d=1.0, w_a=0.0).item() == pytest.approx(dist, rel=1e-5)


def test_rkd_hand_computable_case():
    # a right isosceles triangle against an equilateral one: distances / mean; angles 90/45/45 vs 60/60/60
    e_s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    e_t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    m = (2 + math.sqrt(2)) / 3
    d_s = [1 / m, 1 / m, math.sqrt(2) / m]  # pairs (0,1), (0,2), (1,2); the teacher's are all 1
    dist = 2 * sum(0.5 * (x - 1) ** 2 for x in d_s) / 9
    # per anchor i, the off-diagonal (j != k, both != i) cosines: student 0, r, r, teacher 1/2 each (twice each)
    r = 1 / math.sqrt(2)
    angle = 2 * sum(0.5 * (c - 0.5) ** 2 for c in (0.0, r, r)) / 27  # diagonal (j == k != i) entries are 1 vs 1
    assert rkd_distance_loss(e_s, e_t).item() == pytest.approx(dist, rel=1e-5)
    assert rkd_angle_loss(e_s, e_t).item() == pytest.approx(angle, rel=1e-5)


def test_rkd_distance_term_is_invariant_to_scaling_the_embedding():
    g = torch.Generator().manual_seed(8)
    e_s, e_t = torch.randn(8, 16, generator=g), torch.randn(8, 32, generator=g)
    base = rkd_distance_loss(e_s, e_t).item()
    assert base > 0
    for scale in (0.01, 3.0, 250.0):
        assert rkd_distance_loss(e_s * scale, e_t).item() == pytest.approx(base, rel=1e-4)
        assert rkd_distance_loss(e_s, e_t * scale).item() == pytest.approx(base, rel=1e-4)


# NST --------------------------------------------------------------------------------------------------------------
def test_nst_hand_computable_case():
    # one channel each: s = [1, 0], t = [1, 1] / sqrt2 -> k(t,t) = k(s,s) = 1, k(s,t) = 1/2 -> MMD^2 = 1 + 1 - 1
    f_s = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    f_t = torch.tensor([3.0, 3.0]).view(1, 1, 1, 2)
    assert nst_loss([f_s], [f_t]).item() == pytest.approx(1.0, rel=1e-6)


def test_nst_matches_independent_computation_with_pooling():
    g = torch.Generator().manual_seed(9)
    # pairs 1-2: more channels than positions (the spatial-Gram form); pair 3: fewer (the channel-kernel form)
    g_s = [torch.rand(2, 3, 4, 4, generator=g), torch.rand(2, 4, 2, 2, generator=g), torch.rand(2, 2, 4, 4, generator=g)]
    g_t = [torch.rand(2, 5, 2, 2, generator=g), torch.rand(2, 2, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g),
           torch.rand(2, 2, 2, 2)]
    assert nst_loss(g_s, g_t).item() == pytest.approx(_nst_ref(g_s, g_t), rel=1e-5)
    for pair in range(3):
        one = nst_loss(g_s[pair:pair + 1], g_t[pair:pair + 1]).item()
        assert one > 0 and one == pytest.approx(_nst_ref(g_s[pair:pair + 1], g_t[pair:pair + 1]), rel=1e-5)
    assert nst_loss(g_s, [f.clone() for f in g_s]).item() == pytest.approx(0.0, abs=1e-6)


def _nst_broadcast_ref(g_s, g_t):
    """The kernel by broadcasting, as the paper writes it (independent of the matmul and Gram forms)."""
    total = 0
    for f_s, f_t in zip(g_s, g_t):
        size = min(f_s.shape[-1], f_t.shape[-1])
        f_s, f_t = (torch.nn.functional.adaptive_avg_pool2d(f, size) for f in (f_s, f_t))
        s = torch.nn.functional.normalize(f_s.flatten(2), dim=2)
        t = torch.nn.functional.normalize(f_t.flatten(2), dim=2)

        def k(a, b):
            return (a.unsqueeze(2) * b.unsqueeze(1)).sum(-1).pow(2).mean()

        total = total + k(t, t) + k(s, s) - 2 * k(s, t)
    return total


def test_nst_gradient_matches_the_broadcast_formula():
    g = torch.Generator().manual_seed(10)
    g_s = [torch.rand(3, 4, 4, 4, generator=g, requires_grad=True), torch.rand(3, 6, 2, 2, generator=g, requires_grad=True)]
    g_t = [torch.rand(3, 5, 4, 4, generator=g), torch.rand(3, 8, 2, 2, generator=g)]
    with torch.no_grad():  # dead channels (all zero after a ReLU) on both sides
        g_s[0][:, 1] = 0
        g_s[1][0, 2] = 0
    g_t[0][:, 3] = 0
    value = nst_loss(g_s, g_t)
    assert value.item() == pytest.approx(_nst_broadcast_ref(g_s, g_t).item(), rel=1e-5)
    got = torch.autograd.grad(value, g_s)
    want = torch.autograd.grad(_nst_broadcast_ref(g_s, g_t), g_s)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_losses_stay_float32_under_autocast():
    """The engine calls losses under bf16 autocast; Gram products, distances and kernels must not drop to bf16."""
    g = torch.Generator().manual_seed(11)
    base = torch.randn(1, 32, generator=g) * 10
    e_s = base + 0.01 * torch.randn(8, 32, generator=g)  # close points: bf16 Gram-based distances would be noise
    e_t = base + 0.01 * torch.randn(8, 32, generator=g)
    maps_s = [torch.rand(4, 8, 4, 4, generator=g), torch.rand(4, 16, 2, 2, generator=g)]
    maps_t = [torch.rand(4, 6, 4, 4, generator=g), torch.rand(4, 12, 2, 2, generator=g)]
    cases = {"rkd": lambda: rkd_loss(e_s, e_t), "pkt": lambda: pkt_loss(e_s, e_t), "sp": lambda: sp_loss(maps_s[0], maps_t[0]),
             "sp2": lambda: sp_loss(maps_s[1], maps_t[1]), "nst": lambda: nst_loss(maps_s, maps_t),
             "at": lambda: at_loss(maps_s, maps_t)}
    for name, fn in cases.items():
        exact = fn()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = fn()
        assert under.dtype == torch.float32 and under.item() == pytest.approx(exact.item(), rel=1e-6, abs=1e-9), name


# Through a real regime --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return tmp_path_factory.mktemp("simple-teachers")


@pytest.mark.parametrize("student", ["resnet8x4", "ShuffleV1"])
@pytest.mark.parametrize("method", METHODS)
def test_gradient_routing(teachers, method, student):
    regime = build_regime(teachers, student, "resnet32x4", loss={"ce": 1.0, method: RECIPE[method]})
    terms = assert_gradient_routing(regime, random_batch(regime))
    assert set(terms) == {"ce", method}
    adapters = list(regime.bundle.methods[method].parameters())
    assert (len(adapters) > 0) == (method in ("fitnet", "cc"))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in adapters)


@pytest.mark.parametrize("student", ["resnet8x4", "ShuffleV1"])
@pytest.mark.parametrize("method", METHODS)
def test_digits_epoch_through_cli(digits_teacher_32x4, tmp_path, method, student):
    record = run_digits(method, digits_teacher_32x4, tmp_path / "x", f"student.arch={student}", "dataset.subset=200",
                        "engine.threads=1")
    assert math.isfinite(record[f"train_{method}"])
