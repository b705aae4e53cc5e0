"""SRRL, SemCKD and SimKD: losses against independent numpy computations and hand cases, gradient routing on
same- and cross-architecture pairs, CLI runs on digits, SimKD's deployable wrapper, SRRL's frozen teacher head and
SemCKD's attention and fixed batch."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from kdzoo.checkpoints.format import load_state_dict_strict, load_weights
from kdzoo.checkpoints.load import model_from_meta
from kdzoo.distillers.base import NoParams, SetupContext
from kdzoo.distillers.semckd import SemCKD, SemCKDParams
from kdzoo.distillers.simkd import SimKD, SimKDParams, SimKDStudent
from kdzoo.distillers.srrl import SRRL
from kdzoo.errors import IncompatiblePairError, KdzooError
from kdzoo.models.features import FeatureModel, Features, FeatureSpec, Needs
from kdzoo.program.optim import build_optimizer
from tests.conftest import run_cli
from tests.method_harness import (
    assert_gradient_routing,
    backward_once,
    build_regime,
    random_batch,
    run_digits,
    step_info,
)

# ------------------------------------------------------------------------------------------------------------
# Independent reference maths (float64 numpy, explicit loops)


def np_conv(x, w, pad):
    """Cross-correlation of x (B,C,H,W) with w (O,C,kh,kw), zero padding, stride 1; by explicit loops."""
    b, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.zeros((b, c, h + 2 * pad, wd + 2 * pad))
    xp[:, :, pad:pad + h, pad:pad + wd] = x
    oh, ow = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    out = np.zeros((b, o, oh, ow))
    for n in range(b):
        for k in range(o):
            for i in range(oh):
                for j in range(ow):
                    out[n, k, i, j] = np.sum(xp[n, :, i:i + kh, j:j + kw] * w[k])
    return out


def np_bn_train(x, gamma, beta, eps=1e-5):
    """Training-mode batch norm: per channel, batch statistics over (B,H,W), biased variance."""
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        v = x[:, c]
        out[:, c] = (v - v.mean()) / math.sqrt(v.var() + eps) * gamma[c] + beta[c]
    return out


def np_run(seq: nn.Module, x):
    """Run a Sequential of Conv2d/BatchNorm2d/ReLU layers in numpy (train-mode BN)."""
    for layer in seq:
        if isinstance(layer, nn.Conv2d):
            x = np_conv(x, _np(layer.weight), layer.padding[0])
            if layer.bias is not None:
                x = x + _np(layer.bias)[None, :, None, None]
        elif isinstance(layer, nn.BatchNorm2d):
            x = np_bn_train(x, _np(layer.weight), _np(layer.bias), layer.eps)
        elif isinstance(layer, nn.ReLU):
            x = np.maximum(x, 0)
        else:
            raise AssertionError(type(layer))
    return x


def np_pool(x, size):
    """Average pooling of (B,C,H,W) down to size x size when H is a multiple of size."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def _np(t):
    return t.detach().double().numpy()


def _randomise_bn(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)


class TinyTeacher(nn.Module):
    """A stand-in teacher that only has to expose a classifier via feature_spec()."""

    def __init__(self, dim, classes):
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def feature_spec(self):
        return FeatureSpec(stages=("fc",), head="fc")

    def forward(self, x):
        return self.fc(x)


def make_ctx(s_shapes: Features, t_shapes: Features, teacher=None, batch_size=4) -> SetupContext:
    return SetupContext(student=nn.Identity(), teacher=teacher, student_shapes=s_shapes, teacher_shapes=t_shapes,
                        train_targets=torch.zeros(10, dtype=torch.long), batch_size=batch_size)


def _sz(*shape):
    return torch.Size(shape)


# ------------------------------------------------------------------------------------------------------------
# SRRL


def _srrl(s_dim, t_dim, classes, seed=0):
    torch.manual_seed(seed)
    teacher = TinyTeacher(t_dim, classes)
    method = SRRL(NoParams(), make_ctx(Features(pooled=_sz(2, s_dim)), Features(pooled=_sz(2, t_dim)), teacher))
    return method, teacher


def test_srrl_hand_case():
    method, teacher = _srrl(1, 2, 3)
    with torch.no_grad():
        method.connector.conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        teacher.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        teacher.fc.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    # conv: [[1, 2], [3, 6]]; BN (batch stats) -> [[-1, -1], [1, 1]]; ReLU -> h = [[0, 0], [1, 1]]
    # head(h) = [[0, 0, 1], [1, 1, 3]]; targets all zero: MSE 2/4 + MSE 12/6 = 2.5
    s = Features(pooled=torch.tensor([[1.0], [3.0]]))
    t = Features(pooled=torch.zeros(2, 2), logits=torch.zeros(2, 3))
    loss = method.losses(None, s, t, step_info())["srrl"]
    assert loss.item() == pytest.approx(2.5, abs=1e-4)


def test_srrl_matches_numpy():
    method, teacher = _srrl(5, 4, 3, seed=1)
    _randomise_bn(method)
    g = torch.Generator().manual_seed(2)
    fs, ft, zt = torch.randn(6, 5, generator=g), torch.randn(6, 4, generator=g), torch.randn(6, 3, generator=g)
    got = method.losses(None, Features(pooled=fs), Features(pooled=ft, logits=zt), step_info())["srrl"]

    conv = method.connector.conv
    w = _np(conv.weight)[:, :, 0, 0]
    x = _np(fs)
    pre = np.array([[sum(w[o, c] * x[b, c] for c in range(5)) for o in range(4)] for b in range(6)])
    h = np.maximum(np_bn_train(pre[:, :, None, None], _np(method.connector.bn.weight),
                               _np(method.connector.bn.bias))[:, :, 0, 0], 0)
    pred = h @ _np(teacher.fc.weight).T + _np(teacher.fc.bias)
    expected = np.mean((h - _np(ft)) ** 2) + np.mean((pred - _np(zt)) ** 2)
    assert got.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------------------
# SimKD


def _simkd(s_shape, t_shape, classes=3, factor=2, seed=0):
    torch.manual_seed(seed)
    teacher = TinyTeacher(t_shape[1], classes)
    method = SimKD(SimKDParams(factor=factor),
                   make_ctx(Features(stages=[_sz(*s_shape)]), Features(stages=[_sz(*t_shape)]), teacher))
    return method, teacher


@pytest.mark.parametrize("s_hw,t_hw", [(4, 2), (2, 4), (2, 2)])
def test_simkd_matches_numpy(s_hw, t_hw):
    method, teacher = _simkd((2, 3, s_hw, s_hw), (2, 4, t_hw, t_hw), seed=s_hw + t_hw)
    _randomise_bn(method)
    g = torch.Generator().manual_seed(3)
    fs, ft = torch.randn(3, 3, s_hw, s_hw, generator=g), torch.randn(3, 4, t_hw, t_hw, generator=g)
    got = method.losses(None, Features(stages=[fs]), Features(stages=[ft]), step_info())["simkd"]

    size = min(s_hw, t_hw)
    source, target = np_pool(_np(fs), size), np_pool(_np(ft), size)
    projected = np_run(method.projector, source)
    assert projected.shape == (3, 4, size, size)
    assert got.item() == pytest.approx(np.mean((projected - target) ** 2), rel=1e-5)
    # the reused teacher classifier on the globally pooled projected map
    logits = method.logits(method.project(fs, ft)[0])
    expected = projected.mean(axis=(2, 3)) @ _np(teacher.fc.weight).T + _np(teacher.fc.bias)
    assert np.allclose(_np(logits), expected, atol=1e-5)


def test_simkd_projector_structure_and_hand_case():
    method, _ = _simkd((2, 6, 2, 2), (2, 8, 2, 2), factor=2)
    convs = [m for m in method.projector if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.groups) for c in convs] == \
        [(6, 4, (1, 1), 1), (4, 4, (3, 3), 1), (4, 8, (1, 1), 1)]
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in method.projector) == 3
    # zero convs: every BN sees zeros and outputs its bias; the last BN's bias 0.5 gives a constant map of 0.5
    with torch.no_grad():
        for c in convs:
            c.weight.zero_()
        method.projector[-2].bias.fill_(0.5)
    ft = torch.zeros(2, 8, 2, 2)
    ft[:, 0] = 1.5  # one channel of 8 at 1.5: mean((0.5 - t)^2) = (1 * 1 + 7 * 0.25) / 8
    got = method.losses(None, Features(stages=[torch.randn(2, 6, 2, 2)]), Features(stages=[ft]), step_info())
    assert got["simkd"].item() == pytest.approx((1.0 + 7 * 0.25) / 8, abs=1e-5)


def test_simkd_rejects_a_head_it_cannot_rebuild():
    teacher = TinyTeacher(4, 3)
    teacher.fc = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(IncompatiblePairError, match="simkd"):
        SimKD(SimKDParams(), make_ctx(Features(stages=[_sz(2, 3, 2, 2)]), Features(stages=[_sz(2, 4, 2, 2)]),
                                      teacher))


# ------------------------------------------------------------------------------------------------------------
# SemCKD


def _semckd(s_shapes, t_shapes, batch, seed=0, soft=1.0):
    torch.manual_seed(seed)
    stem = _sz(batch, 1, 4, 4)
    ctx = make_ctx(Features(stages=[stem] + [_sz(batch, *s) for s in s_shapes]),
                   Features(stages=[stem] + [_sz(batch, *t) for t in t_shapes]), batch_size=batch)
    return SemCKD(SemCKDParams(soft=soft), ctx)


def np_semckd(method, s_maps, t_maps, soft):
    b = s_maps[0].shape[0]

    def embed(mlp, f):
        flat = f.reshape(b, -1)
        sim = flat @ flat.T  # B x B
        hidden = np.maximum(sim @ _np(mlp.linear1.weight).T + _np(mlp.linear1.bias), 0)
        out = hidden @ _np(mlp.linear2.weight).T + _np(mlp.linear2.bias)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    q = [embed(m, f) for m, f in zip(method.query, s_maps)]
    k = [embed(m, f) for m, f in zip(method.key, t_maps)]
    n_s, n_t = len(s_maps), len(t_maps)
    alpha = np.zeros((b, n_s, n_t))
    for n in range(b):
        for i in range(n_s):
            e = np.array([q[i][n] @ k[j][n] / soft for j in range(n_t)])
            alpha[n, i] = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
    d = np.zeros((b, n_s, n_t))
    for i, fs in enumerate(s_maps):
        for j, ft in enumerate(t_maps):
            size = min(fs.shape[-1], ft.shape[-1])
            proj = np_run(method.projectors[i * n_t + j], np_pool(fs, size))
            target = np_pool(ft, size)
            for n in range(b):
                d[n, i, j] = np.mean((proj[n] - target[n]) ** 2)
    return (alpha * d).sum() / (b * n_s), alpha


def test_semckd_matches_numpy():
    s_shapes, t_shapes = [(2, 4, 4), (3, 2, 2)], [(3, 4, 4), (2, 2, 2), (4, 1, 1)]
    method = _semckd(s_shapes, t_shapes, batch=8, soft=0.5)
    _randomise_bn(method)
    g = torch.Generator().manual_seed(4)
    s_maps = [torch.randn(8, *s, generator=g) for s in s_shapes]
    t_maps = [torch.randn(8, *t, generator=g) for t in t_shapes]
    stem = torch.zeros(8, 1, 4, 4)
    got = method.losses(None, Features(stages=[stem] + s_maps), Features(stages=[stem] + t_maps), step_info())
    expected, alpha = np_semckd(method, [_np(f) for f in s_maps], [_np(f) for f in t_maps], soft=0.5)
    assert got["semckd"].item() == pytest.approx(expected, rel=1e-5)
    assert np.allclose(_np(method.attention(s_maps, t_maps)), alpha, atol=1e-6)
    # the query/key MLPs: B -> B/2 -> B/4, as SelfA's MLPEmbed with factor 4
    assert (method.query[0].linear1.in_features, method.query[0].linear1.out_features,
            method.query[0].linear2.out_features) == (8, 4, 2)


def test_semckd_hand_case_uniform_attention():
    # identical keys for every teacher layer -> attention 1/2 each; zero projectors -> d = mean(target^2)
    method = _semckd([(2, 2, 2)], [(3, 2, 2), (2, 2, 2)], batch=4)
    with torch.no_grad():
        for mlp in method.key:
            mlp.linear1.weight.zero_()
            mlp.linear2.weight.zero_()
            mlp.linear1.bias.fill_(1.0)
            mlp.linear2.bias.copy_(torch.tensor([1.0]))
        for proj in method.projectors:
            proj[-1].weight.zero_()
    s_maps = [torch.randn(4, 2, 2, 2)]
    t_maps = [torch.full((4, 3, 2, 2), 1.0), torch.full((4, 2, 2, 2), 2.0)]
    stem = torch.zeros(4, 1, 4, 4)
    alpha = method.attention(s_maps, t_maps)
    assert torch.allclose(alpha, torch.full_like(alpha, 0.5))
    got = method.losses(None, Features(stages=[stem] + s_maps), Features(stages=[stem] + t_maps), step_info())
    assert got["semckd"].item() == pytest.approx((0.5 * 1.0 + 0.5 * 4.0), abs=1e-5)  # (1 + 4) / 2


def test_semckd_checks_the_batch_size():
    method = _semckd([(2, 2, 2)], [(2, 2, 2)], batch=4)
    stem = torch.zeros(3, 1, 4, 4)
    with pytest.raises(KdzooError, match="batches of 4"):
        method.losses(None, Features(stages=[stem, torch.randn(3, 2, 2, 2)]),
                      Features(stages=[stem, torch.randn(3, 2, 2, 2)]), step_info())
    assert SemCKD.requires.full_batches


# ------------------------------------------------------------------------------------------------------------
# Real regimes: gradient routing and method-specific behaviour

LOSSES = {"srrl": {"ce": 1.0, "kd": 1.0, "srrl": 1.0}, "semckd": {"ce": 1.0, "kd": 1.0, "semckd": 400.0},
          "simkd": {"ce": 1.0, "simkd": 1.0}}
STUDENTS = ["resnet8x4", "ShuffleV1"]


@pytest.fixture(scope="module")
def regimes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("projector-regimes")
    cache = {}

    def get(method, student):
        if (method, student) not in cache:
            cache[(method, student)] = build_regime(folder, student, "resnet32x4", LOSSES[method], batch_size=8)
        return cache[(method, student)]

    return get


@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("method", sorted(LOSSES))
def test_gradient_routing(regimes, method, student):
    regime = regimes(method, student)
    terms = assert_gradient_routing(regime, random_batch(regime))
    assert set(terms) == set(LOSSES[method])
    adapters = list(regime.methods[method].parameters())
    assert adapters and all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters
                            if p.dim() > 1)  # every adapter weight matrix is trained


def test_srrl_teacher_head_stays_frozen_and_out_of_state(regimes):
    regime = regimes("srrl", "resnet8x4")
    head = regime.teacher.model.fc
    head_ids = {id(p) for p in head.parameters()}
    phase = regime.phases()[-1]
    assert not head_ids & {id(p) for p in phase.params}
    state = regime.state_dict()["bundle"]
    assert not [k for k in state if "teacher" in k or k.startswith("methods.srrl.") and "connector" not in k]
    head_ptrs = {p.data_ptr() for p in head.parameters()}
    assert not head_ptrs & {v.data_ptr() for v in state.values()}
    before = [p.detach().clone() for p in head.parameters()]
    connector = regime.methods["srrl"].connector.conv.weight.detach().clone()
    optimizer = build_optimizer(phase.params, regime.cfg.optim)
    backward_once(regime, random_batch(regime, seed=5))
    optimizer.step()
    assert all(p.grad is None for p in head.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, head.parameters()))
    assert not torch.equal(connector, regime.methods["srrl"].connector.conv.weight)
    # the gradient does flow through the head: the logit term alone reaches the connector
    method = regime.methods["srrl"]
    h = method.connector(torch.randn(8, 256))
    method.teacher_head(h).sum().backward()
    assert method.connector.conv.weight.grad is not None and head.weight.grad is None


def test_simkd_alone_trains_the_projector_not_the_teacher_head(regimes):
    regime = regimes("simkd", "resnet8x4")
    phase = regime.phases()[-1]
    regime.train(True)
    for p in phase.params:
        p.grad = None
    terms = phase.step(random_batch(regime, seed=6), step_info())
    terms["simkd"].backward()  # the {simkd: 1} recipe
    method = regime.methods["simkd"]
    assert all(p.grad is not None for p in method.projector.parameters())
    assert all(p.grad is None for p in regime.teacher.parameters())
    assert regime.student.fc.weight.grad is None  # the student's own head is unused by SimKD
    assert regime.student.layer3[0].conv1.weight.grad is not None


def test_simkd_wrapper_rebuilds_from_meta(regimes):
    regime = regimes("simkd", "resnet8x4")
    wrapper = regime.eval_model()
    assert isinstance(wrapper, SimKDStudent) and regime.eval_model() is wrapper  # built once
    keys = set(wrapper.state_dict())
    assert {"projector.0.weight", "projector.7.running_var", "head.weight", "head.bias"} <= keys
    assert torch.equal(wrapper.state_dict()["head.weight"], regime.teacher.model.fc.weight)
    meta = json.loads(json.dumps(regime.deploy_meta()))  # JSON-able
    assert meta["wrapper"]["method"] == "simkd"
    rebuilt = model_from_meta(meta)
    load_state_dict_strict(rebuilt, wrapper.state_dict(), "wrapper")
    x = torch.randn(5, 3, 32, 32)
    wrapper.eval(), rebuilt.eval()
    with torch.no_grad():
        expected = wrapper(x)
        assert torch.allclose(rebuilt(x), expected, atol=1e-5)
        # the wrapper's logits are the teacher head on the pooled projected last student stage
        method = regime.methods["simkd"]
        feats = regime.bundle.student(x)
        projected, _ = method.project(feats.stages[-1], feats.stages[-1])
        assert torch.allclose(method.logits(projected), expected, atol=1e-5)
        # features of the deployable student (the report's CKA uses them): pooled = the head's input
        tapped = FeatureModel(wrapper, Needs(pooled=True, stages=True, logits=True))(x)
        assert torch.allclose(tapped.pooled, projected.mean(dim=(2, 3)), atol=1e-5)
        assert torch.allclose(tapped.stages[-1], projected, atol=1e-5)
        assert torch.allclose(tapped.logits, expected, atol=1e-5)
    regime.train(True)


def test_semckd_attention_sums_to_one(regimes):
    regime = regimes("semckd", "resnet8x4")
    batch = random_batch(regime, seed=7)
    with torch.no_grad():
        s = regime.bundle.student(batch.inputs)
        t = regime.teacher(batch.inputs)
        alpha = regime.methods["semckd"].attention(s.stages[1:], t.stages[1:])
    assert alpha.shape == (8, 3, 3)
    assert torch.allclose(alpha.sum(dim=-1), torch.ones(8, 3), atol=1e-6)
    assert regime.drop_last


# ------------------------------------------------------------------------------------------------------------
# CLI runs on digits


@pytest.fixture(scope="module")
def digits_runs(digits_teacher_32x4, tmp_path_factory):
    folder = tmp_path_factory.mktemp("projector-cli")
    cache = {}

    def get(method, student):
        if (method, student) not in cache:
            out = folder / f"{method}-{student}"
            record = run_digits(method, digits_teacher_32x4, out, f"student.arch={student}", "dataset.subset=200")
            cache[(method, student)] = (out, record)
        return cache[(method, student)]

    return get


@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("method", sorted(LOSSES))
def test_cli_digits(digits_runs, method, student):
    _, record = digits_runs(method, student)
    assert math.isfinite(record[f"train_{method}"])
    assert math.isfinite(record["test_top1"])


def test_semckd_run_drops_the_last_partial_batch(digits_runs):
    _, record = digits_runs("semckd", "resnet8x4")
    # images seen in the epoch = images/s * seconds: 3 full batches of 64 (192), not all 200 subset samples
    elapsed, rate = record["epoch_time_s"], record["images_per_s"]
    seen = rate * elapsed
    rounding = 0.05 * elapsed + 0.0005 * rate + 1e-6  # both figures are rounded in the metrics
    assert abs(seen - 192) <= rounding < 4, (seen, rounding)


def test_simkd_eval_reproduces_the_run(digits_runs, capsys):
    out, _ = digits_runs("simkd", "resnet8x4")
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert run_cli("eval", "--checkpoint", out, "--which", "last", "--json", "--device", "cpu") == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["top1"] == pytest.approx(summary["last_top1"], abs=1e-9)
    state, meta = load_weights(out / "checkpoints" / "last.safetensors")
    assert meta["wrapper"]["method"] == "simkd"
    expected = {"projector.0.weight", "projector.3.weight", "projector.6.weight", "head.weight", "head.bias"}
    assert expected <= set(state)
    assert any(k.startswith("student.") for k in state)
