"""DKD, DIST and ReviewKD: losses against independent computations, warm-up ramps, ABF shapes on the zoo's pairs,
gradient routing, per-pair recipe values and one CLI epoch each on digits."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from kdzoo.config import load_config
from kdzoo.core.batch import Batch, StepInfo
from kdzoo.distillers.base import SetupContext
from kdzoo.distillers.dist import DIST, DISTParams, dist_loss, dist_parts, pearson_rows
from kdzoo.distillers.dkd import DKD, DKDParams, dkd_parts
from kdzoo.distillers.kd import kd_loss
from kdzoo.distillers.reviewkd import ReviewKD, ReviewKDParams, hcl_level, hcl_loss
from kdzoo.errors import IncompatiblePairError
from kdzoo.models import create_model
from kdzoo.models.features import Features
from kdzoo.models.probe import probe_shapes
from tests.conftest import CONFIGS
from tests.method_harness import (
    assert_gradient_routing,
    build_regime,
    random_batch,
    run_digits,
)

CPU = torch.device("cpu")


def _step(epoch: int) -> StepInfo:
    return StepInfo(epoch=epoch, epochs=240, step=0, steps_per_epoch=10)


def _np_softmax(row, T):
    row = np.asarray(row, dtype=np.float64) / T
    e = np.exp(row - row.max())
    return e / e.sum()


def _kl(p, q):
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0))


# DKD -----------------------------------------------------------------------------------------------------------
def _dkd_reference(zs, zt, targets, T):
    """TCKD and NCKD from the paper's definitions, one sample at a time."""
    tckd = nckd = 0.0
    for s_row, t_row, gt in zip(zs, zt, targets):
        ps, pt = _np_softmax(s_row, T), _np_softmax(t_row, T)
        bs, bt = [ps[gt], 1 - ps[gt]], [pt[gt], 1 - pt[gt]]
        tckd += _kl(bt, bs)
        others = [j for j in range(len(s_row)) if j != gt]
        qs = [ps[j] / (1 - ps[gt]) for j in others]  # distribution over the non-target classes
        qt = [pt[j] / (1 - pt[gt]) for j in others]
        nckd += _kl(qt, qs)
    n = len(zs)
    return tckd * T * T / n, nckd * T * T / n


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_parts_match_the_definition(T):
    zs = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.5], [2.5, 0.0, 0.0, 1.0]]
    zt = [[2.0, 1.0, 0.0, 0.5], [0.5, 0.5, 4.0, -2.0], [-1.0, 3.0, 0.5, 0.0]]
    targets = [1, 2, 0]
    tckd, nckd = dkd_parts(torch.tensor(zs), torch.tensor(zt), torch.tensor(targets), T)
    ref_t, ref_n = _dkd_reference(zs, zt, targets, T)
    assert tckd.item() == pytest.approx(ref_t, rel=1e-5)
    assert nckd.item() == pytest.approx(ref_n, rel=1e-5)
    # the method combines them with alpha, beta (warm-up factor 1 once past the ramp)
    method = DKD(DKDParams(alpha=0.5, beta=3.0, T=T), None)
    batch = Batch(inputs=torch.zeros(3, 1), targets=torch.tensor(targets))
    out = method.losses(batch, Features(logits=torch.tensor(zs)), Features(logits=torch.tensor(zt)), _step(100))
    assert out["dkd"].item() == pytest.approx(0.5 * ref_t + 3.0 * ref_n, rel=1e-5)


def test_dkd_hand_computed_two_classes():
    # Two classes: no non-target distribution to match (NCKD = 0) and TCKD is plain KD.
    # Teacher softmax [3/4, 1/4], student [1/2, 1/2], target 0, T = 1.
    zs, zt = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    tckd, nckd = dkd_parts(zs, zt, torch.tensor([0]), 1.0)
    assert tckd.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-5)
    assert nckd.item() == pytest.approx(0.0, abs=1e-7)


def test_dkd_decomposes_kd():
    # The paper's identity, per sample: KD = TCKD + (1 - p_t[gt]) * NCKD.
    torch.manual_seed(0)
    zs, zt, gt = torch.randn(1, 7) * 3, torch.randn(1, 7) * 3, torch.tensor([4])
    tckd, nckd = dkd_parts(zs, zt, gt, 4.0)
    pt_gt = torch.softmax(zt / 4.0, dim=1)[0, 4].item()
    assert (tckd + (1 - pt_gt) * nckd).item() == pytest.approx(kd_loss(zs, zt, 4.0).item(), rel=1e-4)


def test_dkd_is_zero_for_equal_logits_and_finite_for_confident_teachers():
    z = torch.randn(5, 10)
    tckd, nckd = dkd_parts(z, z.clone(), torch.arange(5), 4.0)
    assert abs(tckd.item()) < 1e-6 and abs(nckd.item()) < 1e-6
    zs = torch.randn(4, 10, requires_grad=True)
    zt = torch.zeros(4, 10)
    zt[:, 3] = 400.0  # p_t over the other classes underflows to 0
    tckd, nckd = dkd_parts(zs * 100, zt, torch.tensor([3, 3, 1, 0]), 4.0)
    (tckd + nckd).backward()
    assert torch.isfinite(tckd) and torch.isfinite(nckd) and torch.isfinite(zs.grad).all()


def test_dkd_warmup_ramp():
    method = DKD(DKDParams(), None)
    zs, zt = torch.randn(4, 10), torch.randn(4, 10)
    batch = Batch(inputs=torch.zeros(4, 1), targets=torch.tensor([0, 1, 2, 3]))
    full = method.losses(batch, Features(logits=zs), Features(logits=zt), _step(200))["dkd"].item()
    for epoch, factor in [(0, 1 / 20), (9, 10 / 20), (18, 19 / 20), (19, 1.0), (50, 1.0)]:
        got = method.losses(batch, Features(logits=zs), Features(logits=zt), _step(epoch))["dkd"].item()
        assert got == pytest.approx(factor * full, rel=1e-6), epoch


def test_dkd_pair_betas_in_recipes():
    assert DKD.pair_overrides("resnet56", "resnet20") == {"methods": {"dkd": {"beta": 2.0}}}
    assert DKD.pair_overrides("resnet32x4", "resnet8x4") == {}
    expected = {"resnet56-resnet20": 2.0, "resnet110-resnet32": 2.0, "vgg13-vgg8": 6.0, "vgg13-MobileNetV2": 6.0,
                "wrn_40_2-wrn_16_2": 6.0, "wrn_40_2-wrn_40_1": 6.0,
                # mdistiller's configs give these pairs no BETA: the default 8
                "wrn_40_2-ShuffleV1": None, "resnet32x4-resnet8x4": None, "ResNet50-MobileNetV2": None}
    for pair, beta in expected.items():
        cfg = load_config(CONFIGS / "cifar100" / "dkd" / f"{pair}.yaml")
        assert cfg.loss == {"ce": 1.0, "dkd": 1.0}
        assert cfg.methods.get("dkd", {}).get("beta") == beta, pair
        assert cfg.epochs == 240 and cfg.schedule.milestones == [150, 180, 210]
        assert cfg.optim.lr == (0.01 if "MobileNet" in pair or "Shuffle" in pair else 0.05)


# DIST ----------------------------------------------------------------------------------------------------------
def test_dist_pearson_matches_numpy_corrcoef():
    rng = np.random.default_rng(0)
    a, b = rng.random((6, 9)), rng.random((6, 9))
    got = pearson_rows(torch.tensor(a), torch.tensor(b)).numpy()
    expected = [np.corrcoef(a[i], b[i])[0, 1] for i in range(6)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_dist_loss_matches_independent_computation():
    rng = np.random.default_rng(1)
    zs, zt = rng.normal(size=(5, 7)) * 2, rng.normal(size=(5, 7)) * 2
    tau, beta, gamma = 4.0, 0.7, 1.9
    ys = np.stack([_np_softmax(r, tau) for r in zs])
    yt = np.stack([_np_softmax(r, tau) for r in zt])
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(5)])
    intra = 1 - np.mean([np.corrcoef(ys[:, j], yt[:, j])[0, 1] for j in range(7)])
    expected = tau**2 * (beta * inter + gamma * intra)
    got = dist_loss(torch.tensor(zs, dtype=torch.float32), torch.tensor(zt, dtype=torch.float32), beta, gamma, tau)
    assert got.item() == pytest.approx(expected, rel=1e-4)
    method = DIST(DISTParams(beta=beta, gamma=gamma, tau=tau), None)
    out = method.losses(None, Features(logits=torch.tensor(zs)), Features(logits=torch.tensor(zt)), _step(0))
    assert out["dist"].item() == pytest.approx(expected, rel=1e-4)


def test_dist_hand_computed_anticorrelated():
    # Two samples, two classes, mirrored outputs: every row and every column is perfectly anti-correlated,
    # so inter = intra = 1 - (-1) = 2 and the loss is tau^2 * (2 beta + 2 gamma).
    zs = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    zt = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    inter, intra = dist_parts(zs, zt, 1.0)
    assert inter.item() == pytest.approx(2.0, abs=1e-6) and intra.item() == pytest.approx(2.0, abs=1e-6)
    assert dist_loss(zs, zt, 1.0, 1.0, 1.0).item() == pytest.approx(4.0, abs=1e-5)
    assert dist_loss(zs, zt, 1.0, 0.5, 2.0).item() == pytest.approx(4.0 * (2.0 + 1.0), abs=1e-4)


def test_dist_of_identical_logits_is_zero():
    z = torch.randn(16, 10) * 3
    inter, intra = dist_parts(z, z.clone(), 4.0)
    assert abs(inter.item()) < 1e-4 and abs(intra.item()) < 1e-4
    assert dist_loss(z, z.clone(), 1.0, 1.0, 4.0).item() == pytest.approx(0.0, abs=1e-3)


def test_dist_single_sample_batch_is_finite():
    # a last partial batch of one sample: the intra-class columns are constant (correlation 0 by the eps)
    zs = torch.randn(1, 10, requires_grad=True)
    loss = dist_loss(zs, torch.randn(1, 10), 1.0, 1.0, 4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()


# ReviewKD ------------------------------------------------------------------------------------------------------
def _np_pool(x, size):
    n, c, h, w = x.shape
    return x.reshape(n, c, size, h // size, size, w // size).mean(axis=(3, 5))


def test_hcl_pyramid_weights_hand_computed():
    # A +-1 checkerboard against zeros: the MSE is 1 and every pooled map (even block sizes) is 0, so the level
    # loss is 1 / (sum of the weights used): 1 + 1/2 + 1/4 + 1/8 at 8x8, 1 + 1/2 + 1/4 at 4x4, 1 + 1/2 at 2x2.
    for h, total in [(8, 1.875), (4, 1.75), (2, 1.5), (1, 1.0)]:
        idx = torch.arange(h)
        board = ((idx[:, None] + idx[None, :]) % 2 * 2 - 1).float().expand(2, 3, h, h)
        if h == 1:
            board = torch.ones(2, 3, 1, 1)
        got = hcl_level(board, torch.zeros_like(board)).item()
        assert got == pytest.approx(1.0 / total, rel=1e-6), h


def test_hcl_matches_numpy_and_sums_levels():
    rng = np.random.default_rng(2)
    fs8, ft8 = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(2, 3, 8, 8))
    fs2, ft2 = rng.normal(size=(2, 5, 2, 2)), rng.normal(size=(2, 5, 2, 2))
    fs1, ft1 = rng.normal(size=(2, 4, 1, 1)), rng.normal(size=(2, 4, 1, 1))

    def mse(a, b):
        return float(((a - b) ** 2).mean())

    level8 = (mse(fs8, ft8) + 0.5 * mse(_np_pool(fs8, 4), _np_pool(ft8, 4))
              + 0.25 * mse(_np_pool(fs8, 2), _np_pool(ft8, 2)) + 0.125 * mse(_np_pool(fs8, 1), _np_pool(ft8, 1))
              ) / 1.875
    level2 = (mse(fs2, ft2) + 0.5 * mse(_np_pool(fs2, 1), _np_pool(ft2, 1))) / 1.5
    level1 = mse(fs1, ft1)
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    got = hcl_loss([t(fs8), t(fs2), t(fs1)], [t(ft8), t(ft2), t(ft1)])
    assert got.item() == pytest.approx(level8 + level2 + level1, rel=1e-5)


def test_hcl_of_identical_maps_is_zero():
    maps = [torch.randn(2, 4, s, s) for s in (8, 4, 1)]
    assert hcl_loss(maps, [m.clone() for m in maps]).item() == 0.0


@functools.lru_cache(maxsize=None)
def _shapes(arch: str, size: int, in_channels: int) -> Features:
    """Probe shapes of a zoo model (cached: several tests share the same models)."""
    torch.manual_seed(0)
    return probe_shapes(create_model(arch, num_classes=10, in_channels=in_channels), None,
                        torch.zeros(2, in_channels, size, size))


def _reviewkd(teacher: str, student: str, size: int = 32, in_channels: int = 3,
              device: str = "cpu") -> tuple[ReviewKD, Features, Features]:
    s_shapes, t_shapes = _shapes(student, size, in_channels), _shapes(teacher, size, in_channels)
    ctx = SetupContext(student=None, teacher=None, student_shapes=s_shapes, teacher_shapes=t_shapes,
                       train_targets=torch.zeros(10, dtype=torch.long), batch_size=2)
    torch.manual_seed(0)
    with torch.device(device):
        return ReviewKD(ReviewKDParams(), ctx), s_shapes, t_shapes


def _student_levels_like(s_shapes: Features, device: str) -> list[torch.Tensor]:
    levels = [torch.randn(2, *shape[1:], device=device) for shape in s_shapes.stages[1:]]
    return levels + [torch.randn(2, s_shapes.pooled[1], 1, 1, device=device)]


@pytest.mark.parametrize("teacher,student,levels", [
    ("resnet32x4", "resnet8x4", 4), ("resnet32x4", "ShuffleV1", 4), ("resnet32x4", "ShuffleV2", 4),
    ("wrn_40_2", "wrn_16_2", 4), ("vgg13", "vgg8", 5), ("vgg13", "MobileNetV2", 5), ("ResNet50", "MobileNetV2", 5),
    ("resnet32x4", "vgg8", 4),  # 5 student levels, 4 teacher levels: the deepest 4 pair up
])
def test_reviewkd_abf_outputs_have_the_teacher_shapes(teacher, student, levels):
    # shapes only: the ABFs run on the meta device (same code path, no arithmetic)
    method, s_shapes, t_shapes = _reviewkd(teacher, student, device="meta")
    outs = method.fuse(_student_levels_like(s_shapes, "meta"))
    teacher_levels = [tuple(shape) for shape in t_shapes.preact[1:]] + [(2, t_shapes.pooled[1], 1, 1)]
    assert len(outs) == levels
    assert [tuple(o.shape) for o in outs] == teacher_levels[-levels:]
    # ABF width: min(512, the student's pooled width); only the deepest ABF has no attention
    assert method.abfs[0].conv1[0].out_channels == min(512, s_shapes.pooled[1])
    assert method.abfs[0].att_conv is None and all(abf.att_conv is not None for abf in method.abfs[1:])


def test_reviewkd_works_on_digits_sized_maps():
    for student in ("resnet8x4", "ShuffleV1", "MobileNetV2", "vgg8"):
        method, s_shapes, t_shapes = _reviewkd("resnet32x4", student, size=8, in_channels=1, device="meta")
        outs = method.fuse(_student_levels_like(s_shapes, "meta"))
        assert [tuple(o.shape) for o in outs] == ([tuple(s) for s in t_shapes.preact[1:]]
                                                  + [(2, t_shapes.pooled[1], 1, 1)])


def test_reviewkd_warmup_ramp():
    method, s_shapes, t_shapes = _reviewkd("resnet32x4", "resnet8x4", size=8, in_channels=1)
    method.eval()
    torch.manual_seed(1)
    s = Features(stages=[torch.randn(2, *x[1:]) for x in s_shapes.stages], pooled=torch.randn(2, s_shapes.pooled[1]))
    t = Features(preact=[torch.randn(2, *x[1:]) for x in t_shapes.preact], pooled=torch.randn(2, t_shapes.pooled[1]))
    with torch.no_grad():
        full = method.losses(None, s, t, _step(100))["reviewkd"].item()
        assert full > 0
        for epoch, factor in [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (30, 1.0)]:
            got = method.losses(None, s, t, _step(epoch))["reviewkd"].item()
            assert got == pytest.approx(factor * full, rel=1e-6), epoch


def test_reviewkd_rejects_a_teacher_without_stages():
    t_shapes = Features(logits=torch.Size([2, 10]), pooled=torch.Size([2, 64]))
    ctx = SetupContext(student=None, teacher=None, student_shapes=_shapes("resnet8x4", 32, 3), teacher_shapes=t_shapes,
                       train_targets=torch.zeros(10), batch_size=2)
    with pytest.raises(IncompatiblePairError, match="reviewkd"):
        ReviewKD(ReviewKDParams(), ctx)


def test_reviewkd_pair_weights_in_recipes():
    expected = {"resnet32x4-resnet8x4": 5.0, "wrn_40_2-wrn_16_2": 5.0, "wrn_40_2-ShuffleV1": 5.0,
                "resnet32x4-ShuffleV1": 5.0, "resnet32x4-ShuffleV2": 8.0, "resnet56-resnet20": 0.6,
                "resnet110-resnet32": 1.0, "vgg13-vgg8": 1.0, "ResNet50-MobileNetV2": 1.0}
    for pair, weight in expected.items():
        cfg = load_config(CONFIGS / "cifar100" / "reviewkd" / f"{pair}.yaml")
        assert cfg.loss == {"ce": 1.0, "reviewkd": weight}, pair
    assert load_config(CONFIGS / "cifar100" / "dist" / "resnet32x4-resnet8x4.yaml").loss == {"ce": 1.0, "dist": 2.0}


# Through the regime and the CLI --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """One folder for the random teacher checkpoints, so each is written once."""
    return tmp_path_factory.mktemp("teachers")


@pytest.mark.parametrize("student", ["resnet8x4", "ShuffleV1"])
def test_gradient_routing(teachers, student):
    # One regime runs the three methods side by side (one teacher forward instead of three).
    regime = build_regime(teachers, student, "resnet32x4", loss={"ce": 1.0, "dkd": 1.0, "dist": 1.0,
                                                                 "reviewkd": 1.0})
    terms = assert_gradient_routing(regime, random_batch(regime))
    assert all(terms[m].item() > 0 for m in ("dkd", "dist", "reviewkd"))
    abfs = regime.methods["reviewkd"].abfs
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in abfs.parameters())


def test_each_term_reaches_the_student(teachers):
    # each term on its own (not only the weighted sum) sends a gradient into the student's first layer
    regime = build_regime(teachers, "resnet8", "resnet14", loss={"ce": 1.0, "dkd": 1.0, "dist": 1.0, "reviewkd": 1.0},
                          in_channels=1, size=8)
    regime.train(True)
    first = next(p for p in regime.student.parameters() if p.dim() == 4)
    terms = regime.phases()[-1].step(random_batch(regime), StepInfo(epoch=0, epochs=10, step=0, steps_per_epoch=10))
    for method in ("dkd", "dist", "reviewkd"):
        (grad,) = torch.autograd.grad(terms[method], [first], retain_graph=True)
        assert grad.abs().sum() > 0, method


@pytest.mark.parametrize("method", ["dkd", "dist", "reviewkd"])
@pytest.mark.parametrize("student", ["resnet8x4", "ShuffleV1"])
def test_cli_digits_epoch(method, student, digits_teacher_32x4, tmp_path):
    record = run_digits(method, digits_teacher_32x4, tmp_path / "x", f"student.arch={student}", "dataset.subset=200")
    assert math.isfinite(record[f"train_{method}"])
