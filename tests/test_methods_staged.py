"""VID, AB, FT and FSP: losses against independent hand computations, adapters, the init stages (what they train,
where gradients go, the switch to the main stage), gradient routing through a real regime, and short digits runs
through the CLI."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from kdzoo.distillers.ab import AB, ABParams, ab_loss, connector
from kdzoo.distillers.fsp import FSP, FSPParams, fsp_loss, fsp_matrices
from kdzoo.distillers.ft import FT, FTParams, factor_transfer_loss
from kdzoo.distillers.vid import VID, VIDParams, gaussian_nll
from kdzoo.errors import IncompatiblePairError
from kdzoo.models import create_model
from kdzoo.models.features import Features, feature_spec, student_body
from kdzoo.models.probe import probe_shapes
from tests.conftest import CONFIGS, FAST, run_cli
from tests.method_harness import (  # noqa: F401 (autouse fixture)
    assert_gradient_routing,
    backward_once,
    build_regime,
    one_thread,
    pool_pair_np,
    random_batch,
    run_digits,
    setup_context,
)

RECIPE = {"vid": 1.0, "ab": 1.0, "ft": 200.0, "fsp": 50.0}
STAGED = ("ab", "ft", "fsp")  # methods with an init stage




@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return tmp_path_factory.mktemp("staged-teachers")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _shapes(*maps: tuple) -> Features:
    return Features(stages=[torch.Size(s) for s in maps], preact=[torch.Size(s) for s in maps])


# VID ---------------------------------------------------------------------------------------------------------------
def _vid_ref(g_s, g_t, pairs, eps) -> float:
    """Sum over pairs of the mean Gaussian NLL, the regressor applied pixel by pixel as matrix products."""
    total = 0.0
    for f_s, f_t, pair in zip(g_s, g_t, pairs):
        f_s, f_t = pool_pair_np(_np(f_s), _np(f_t))
        w1, w2, w3 = (_np(pair.regressor[i].weight)[:, :, 0, 0] for i in (0, 2, 4))
        var = [math.log(1 + math.exp(v)) + eps for v in _np(pair.log_scale)]
        b, _, h, w = f_s.shape
        acc, count = 0.0, 0
        for i, y, x in itertools.product(range(b), range(h), range(w)):
            mu = w3 @ np.maximum(w2 @ np.maximum(w1 @ f_s[i, :, y, x], 0), 0)
            for c in range(f_t.shape[1]):
                acc += 0.5 * ((mu[c] - f_t[i, c, y, x]) ** 2 / var[c] + math.log(var[c]))
                count += 1
        total += acc / count
    return total


def test_vid_hand_computable_case():
    # zero mean, target 1 everywhere, variance 5: 0.5 * (1/5 + ln 5) per element
    target = torch.ones(2, 3, 2, 2)
    log_scale = torch.full((3,), math.log(math.expm1(5.0 - 1e-5)))
    got = gaussian_nll(torch.zeros_like(target), target, log_scale, 1e-5).item()
    assert got == pytest.approx(0.5 * (1 / 5 + math.log(5)), rel=1e-6)


def test_vid_initial_variance_and_regressor_shape():
    s = _shapes((2, 16, 8, 8), (2, 16, 8, 8), (2, 32, 4, 4))
    t = _shapes((2, 32, 8, 8), (2, 64, 8, 8), (2, 128, 4, 4))
    method = VID(VIDParams(), setup_context(s, t))
    assert len(method.pairs) == 2
    pair = method.pairs[1]
    convs = [m for m in pair.regressor if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs] == [
        (32, 128, (1, 1), None), (128, 128, (1, 1), None), (128, 128, (1, 1), None)]  # mid = teacher channels
    var = torch.nn.functional.softplus(pair.log_scale) + 1e-5
    assert torch.allclose(var, torch.full((128,), 5.0))


def test_vid_matches_independent_computation_with_pooling_and_uneven_stage_lists():
    g = torch.Generator().manual_seed(0)
    # student: 3 stages past the stem, teacher: 2 -> zip to 2 pairs; pair 1 pools the student, pair 2 the teacher
    s_maps = [torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 4, 4, generator=g),
              torch.randn(2, 2, 2, 2, generator=g), torch.randn(2, 4, 1, 1, generator=g)]
    t_maps = [torch.randn(2, 5, 8, 8, generator=g), torch.randn(2, 4, 2, 2, generator=g),
              torch.randn(2, 6, 4, 4, generator=g)]
    method = VID(VIDParams(), setup_context(Features(stages=[m.shape for m in s_maps]),
                                   Features(stages=[m.shape for m in t_maps])))
    with torch.no_grad():
        for p in method.parameters():
            p.normal_(generator=g)
    got = method.losses(None, Features(stages=s_maps), Features(stages=t_maps), None)["vid"]
    assert got.item() == pytest.approx(_vid_ref(s_maps[1:], t_maps[1:], method.pairs, 1e-5), rel=1e-5)


# AB ----------------------------------------------------------------------------------------------------------------
def _ab_ref(sources, targets, margin=1.0) -> float:
    n = len(sources)
    total = 0.0
    for i, (s, t) in enumerate(zip(sources, targets)):
        layer = 0.0
        for v, u in zip(_np(s).reshape(-1), _np(t).reshape(-1)):
            if u <= 0 and v > -margin:
                layer += (v + margin) ** 2
            elif u > 0 and v <= margin:
                layer += (v - margin) ** 2
        total += 2.0 ** (i - n + 1) * layer
    return total / sources[0].shape[0] / 1000 * 3


def test_ab_hand_computable_case():
    s = torch.tensor([[[[-2.0, 0.0], [0.5, 2.0]]]])
    t = torch.tensor([[[[-1.0, -1.0], [1.0, 1.0]]]])
    # (0 + 1)^2 where the teacher is off and the student above -1; (0.5 - 1)^2 where it is on and below 1
    assert ab_loss([s], [t], 1.0).item() == pytest.approx(1.25 * 3 / 1000)
    # two layers: the shallower weighs 1/2; two samples: divided by 2
    s2, t2 = torch.cat([s, s]), torch.cat([t, t])
    assert ab_loss([s2, s2], [t2, t2], 1.0).item() == pytest.approx((0.5 + 1) * 2 * 1.25 / 2 * 3 / 1000)


def test_ab_matches_independent_computation():
    g = torch.Generator().manual_seed(1)
    sources = [torch.randn(3, 2, 4, 4, generator=g) * 2 for _ in range(3)]
    targets = [torch.randn(3, 2, 4, 4, generator=g) for _ in range(3)]
    for margin in (1.0, 0.5):
        got = ab_loss(sources, targets, margin).item()
        assert got == pytest.approx(_ab_ref(sources, targets, margin), rel=1e-5)


@pytest.mark.parametrize("s_size,t_size,kind", [(8, 8, nn.Conv2d), (16, 8, nn.Conv2d), (4, 8, nn.ConvTranspose2d),
                                               (8, 2, nn.Conv2d), (4, 7, nn.ConvTranspose2d),
                                               (1, 4, nn.ConvTranspose2d)])
def test_ab_connector_maps_the_student_to_the_teacher_shape(s_size, t_size, kind):
    module = connector((2, 6, s_size, s_size), (2, 10, t_size, t_size))
    assert isinstance(module[0], kind) and isinstance(module[1], nn.BatchNorm2d)
    if s_size == t_size:
        assert module[0].kernel_size == (1, 1)
    if s_size == 2 * t_size:
        assert (module[0].kernel_size, module[0].stride) == ((3, 3), (2, 2))
    if 2 * s_size == t_size:
        assert (module[0].kernel_size, module[0].stride) == ((4, 4), (2, 2))
    assert module(torch.randn(2, 6, s_size, s_size)).shape == (2, 10, t_size, t_size)
    assert isinstance(connector((2, 6, 4, 4), (2, 6, 4, 4)), nn.Identity)


def test_ab_connectors_fit_every_published_pair_at_every_input_size():
    from kdzoo.bench.anchors import PAIRS

    models, cache = {}, {}

    def model(arch, channels):
        if (arch, channels) not in models:
            models[(arch, channels)] = create_model(arch, num_classes=10, in_channels=channels)
        return models[(arch, channels)]

    def shapes(arch, size, channels):
        if (arch, size) not in cache:
            cache[(arch, size)] = probe_shapes(model(arch, channels), None, torch.zeros(2, channels, size, size))
        return cache[(arch, size)]

    for (teacher, student), (size, channels) in itertools.product(PAIRS.values(), [(32, 3), (28, 1), (8, 1)]):
        s, t = shapes(student, size, channels), shapes(teacher, size, channels)
        method = AB(ABParams(), setup_context(s, t, model(student, channels)))
        for conn, s_shape, t_shape in zip(method.connectors, s.preact[1:], t.preact[1:]):
            out = conn.eval()(torch.zeros(s_shape))
            assert out.shape == t_shape, (teacher, student, size)


def test_student_body_is_everything_but_the_head():
    for arch in ("resnet8", "ShuffleV1", "MobileNetV2"):
        model = create_model(arch, num_classes=10)
        head = model.get_submodule(feature_spec(model).head)
        body = {id(p) for m in student_body(model) for p in m.parameters()}
        assert body == {id(p) for p in model.parameters()} - {id(p) for p in head.parameters()}


# FT ----------------------------------------------------------------------------------------------------------------
def _ft_ref(u, e, p1=2.0) -> float:
    u, e = pool_pair_np(_np(u), _np(e))
    total, count = 0.0, 0
    for i in range(u.shape[0]):
        if p1 == 0:
            a, b = u[i].reshape(-1), e[i].reshape(-1)
        else:
            a = (u[i] ** p1).mean(axis=0).reshape(-1)
            b = (e[i] ** p1).mean(axis=0).reshape(-1)
        a = a / math.sqrt(sum(v * v for v in a))
        b = b / math.sqrt(sum(v * v for v in b))
        total += sum(abs(x - y) for x, y in zip(a, b))
        count += len(a)
    return total / count


def test_ft_hand_computable_case():
    u = torch.tensor([[[[1.0, 0.0]]]])  # squared channel mean [1, 0] -> normalised [1, 0]
    e = torch.tensor([[[[0.0, 2.0]]]])  # [0, 4] -> [0, 1]
    assert factor_transfer_loss(u, e).item() == pytest.approx(1.0)  # (|1 - 0| + |0 - 1|) / 2
    # the paper's factor (p1 0): the whole map normalised, channels included
    u2 = torch.tensor([[[[3.0]], [[4.0]]]])  # (1, 2, 1, 1) -> [0.6, 0.8]
    e2 = torch.tensor([[[[0.0]], [[1.0]]]])  # -> [0, 1]
    assert factor_transfer_loss(u2, e2, p1=0).item() == pytest.approx((0.6 + 0.2) / 2)


@pytest.mark.parametrize("p1", [2.0, 0.0])
def test_ft_matches_independent_computation_with_pooling(p1):
    g = torch.Generator().manual_seed(2)
    u, e = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    assert factor_transfer_loss(u, e, p1=p1).item() == pytest.approx(_ft_ref(u, e, p1), rel=1e-5)
    assert factor_transfer_loss(e, u, p1=p1).item() == pytest.approx(_ft_ref(e, u, p1), rel=1e-5)


def test_ft_modules_follow_repdistiller():
    s = _shapes((2, 16, 8, 8), (2, 32, 4, 4))
    t = _shapes((2, 16, 8, 8), (2, 64, 2, 2))
    method = FT(FTParams(), setup_context(s, t))
    def convs(seq):
        return [(m.in_channels, m.out_channels, type(m)) for m in seq
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    C, T = nn.Conv2d, nn.ConvTranspose2d
    assert convs(method.paraphraser.encoder) == [(64, 64, C), (64, 32, C), (32, 32, C)]
    assert convs(method.paraphraser.decoder) == [(32, 32, T), (32, 64, T), (64, 64, T)]
    assert convs(method.translator) == [(32, 32, C), (32, 32, C), (32, 32, C)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in method.paraphraser.modules())  # use_bn False
    assert sum(isinstance(m, nn.BatchNorm2d) for m in method.translator) == 3
    assert method.p1 == 2.0
    # init term: plain MSE of the reconstruction
    f_t = torch.randn(2, 64, 2, 2)
    got = method.init_losses(None, None, Features(stages=[torch.zeros(1), f_t]), None)["ft"]
    rec = _np(method.paraphraser(f_t))
    assert got.item() == pytest.approx(float(((rec - _np(f_t)) ** 2).mean()), rel=1e-5)
    # 1x1 factor maps: the channel mean is constant after normalisation, so the paper's factor is used
    tiny = FT(FTParams(), setup_context(_shapes((2, 16, 8, 8), (2, 32, 1, 1)), t))
    assert tiny.p1 == 0.0


def test_ft_pair_override_sets_the_init_lr_of_resnet_students():
    assert FT.pair_overrides("resnet32x4", "resnet8x4") == {"methods": {"ft": {"init_lr": 0.01}}}
    assert FT.pair_overrides("resnet32x4", "ShuffleV1") == {}


# FSP ---------------------------------------------------------------------------------------------------------------
def _fsp_ref(s_maps, t_maps) -> float:
    def grams(maps):
        out = []
        for bottom, top in zip(maps[:-1], maps[1:]):
            bottom, top = pool_pair_np(_np(bottom), _np(top))
            b, c1, h, w = bottom.shape
            c2 = top.shape[1]
            gram = np.zeros((b, c2, c1))
            for n, i, j in itertools.product(range(b), range(c2), range(c1)):
                gram[n, i, j] = sum(top[n, i, y, x] * bottom[n, j, y, x] for y in range(h) for x in range(w)) / (h * w)
            out.append(gram)
        return out

    return sum(float(((a - b) ** 2).mean()) for a, b in zip(grams(s_maps), grams(t_maps)))


def test_fsp_hand_computable_case():
    bottom = torch.tensor([[[[1.0, 2.0]]]])  # (1, 1, 1, 2)
    top = torch.tensor([[[[1.0, 1.0]], [[2.0, 0.0]]]])  # (1, 2, 1, 2)
    gram = fsp_matrices([bottom, top])[0]
    assert gram.tolist() == [[[1.5], [1.0]]]  # (1*1 + 1*2) / 2, (2*1 + 0*2) / 2
    zeros = [torch.zeros_like(bottom), torch.zeros_like(top)]
    assert fsp_loss([bottom, top], zeros).item() == pytest.approx((1.5 ** 2 + 1.0) / 2)


def test_fsp_matches_independent_computation_with_pooling():
    g = torch.Generator().manual_seed(3)
    sizes = [(3, 8), (3, 8), (4, 4), (2, 2)]  # (channels, size): pairs pool 8->4 and 4->2
    s_maps = [torch.randn(2, c, h, h, generator=g) for c, h in sizes]
    t_maps = [torch.randn(2, c, h, h, generator=g) for c, h in sizes]
    assert fsp_loss(s_maps, t_maps).item() == pytest.approx(_fsp_ref(s_maps, t_maps), rel=1e-5)
    assert fsp_loss(s_maps, [m.clone() for m in s_maps]).item() == pytest.approx(0.0, abs=1e-7)


def test_fsp_rejects_unequal_channels_naming_them():
    s = _shapes((2, 24, 32, 32), (2, 240, 16, 16))
    t = _shapes((2, 32, 32, 32), (2, 64, 32, 32))
    with pytest.raises(IncompatiblePairError, match=r"student \[24, 240\], teacher \[32, 64\]"):
        FSP(FSPParams(), setup_context(s, t, create_model("resnet8", 10)))


# Through a real regime ---------------------------------------------------------------------------------------------
ROUTING_PAIRS = {  # method -> (teacher, student) pairs: one same-architecture, one cross-architecture
    "vid": [("resnet32x4", "resnet8x4"), ("resnet32x4", "ShuffleV1")],
    "ab": [("resnet32x4", "resnet8x4"), ("resnet32x4", "ShuffleV1")],
    "ft": [("resnet32x4", "resnet8x4"), ("resnet32x4", "ShuffleV1")],
    "fsp": [("resnet32x4", "resnet8x4"), ("wrn_16_1", "resnet8")],  # FSP needs equal channels stage by stage
}


def _ids(p):
    return f"{p[0]}-{p[1]}"


@pytest.mark.parametrize("method,pair", [(m, p) for m, ps in ROUTING_PAIRS.items() for p in ps],
                         ids=lambda x: x if isinstance(x, str) else _ids(x))
def test_gradient_routing(teachers, method, pair):
    teacher, student = pair
    regime = build_regime(teachers, student, teacher, loss={"ce": 1.0, method: RECIPE[method]})
    batch = random_batch(regime)
    phases = regime.phases()
    adapters = list(regime.bundle.methods[method].parameters())
    if method == "vid":
        assert [p.name for p in phases] == ["main"]
        terms = assert_gradient_routing(regime, batch)
        assert set(terms) == {"ce", "vid"} and len(adapters) > 0
        assert all(p.grad is not None for p in adapters)
        return
    assert [p.name for p in phases] == [f"init:{method}", "main"]
    terms = assert_gradient_routing(regime, batch, phase_index=0)
    assert set(terms) == {method}
    student = regime.student
    head = student.get_submodule(feature_spec(student).head)
    if method == "ft":  # the paraphraser stage: the student gets nothing
        assert all(p.grad is None for p in student.parameters())
        terms = assert_gradient_routing(regime, batch)  # main: translator and student, not the paraphraser
        assert set(terms) == {"ce", "ft"}
        ft = regime.bundle.methods["ft"]
        assert all(p.grad is not None for p in ft.translator.parameters())
        assert all(p.grad is None and not p.requires_grad for p in ft.paraphraser.parameters())
    else:  # the student's body learns, its classifier does not
        assert all(p.grad is None for p in head.parameters())
        assert all(p.grad is not None for p in adapters)
        assert phases[-1].weights == {"ce": 1.0}  # the method's term is dropped from the main stage
        terms = backward_once(regime, batch)
        assert set(terms) == {"ce"}


@pytest.mark.parametrize("method", STAGED)
def test_init_phase_trains_exactly_the_declared_modules(teachers, method):
    regime = build_regime(teachers, "resnet8x4", "resnet32x4", loss={"ce": 1.0, method: RECIPE[method]},
                          methods={method: {"init_epochs": 7}})
    init, main = regime.phases()
    assert (init.name, init.epochs, init.evaluates) == (f"init:{method}", 7, False)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    controller = init.controller(optimizer, 10)
    for _ in range(25):  # an init stage trains at a constant lr, whatever the recipe's schedule
        optimizer.step()
        controller.after_step()
    assert optimizer.param_groups[0]["lr"] == 0.3 and main.evaluates
    assert init.weights == {method: 1.0}
    student = regime.student
    head = {id(p) for p in student.get_submodule(feature_spec(student).head).parameters()}
    body = {id(p) for p in student.parameters()} - head
    m = regime.bundle.methods[method]
    if method == "ft":
        expected = {id(p) for p in m.paraphraser.parameters()}
    else:
        expected = body | {id(p) for p in m.parameters()}  # AB: plus its connectors; FSP has none
    got = [id(p) for p in init.params]
    assert len(got) == len(set(got)) and set(got) == expected
    assert {id(p) for p in main.params} == {id(p) for p in regime.bundle.parameters()}
    # no init stage at all with init_epochs 0
    regime0 = build_regime(teachers, "resnet8x4", "resnet32x4", loss={"ce": 1.0, method: RECIPE[method]},
                           methods={method: {"init_epochs": 0}})
    assert [p.name for p in regime0.phases()] == ["main"]


def test_ft_switch_to_main_freezes_the_paraphraser(teachers):
    regime = build_regime(teachers, "resnet8x4", "resnet32x4", loss={"ce": 1.0, "ft": 200.0})
    ft = regime.bundle.methods["ft"]
    batch = random_batch(regime)
    init, main = regime.phases()
    init_opt = torch.optim.SGD([p for p in init.params if p.requires_grad], lr=0.1)
    before = [p.detach().clone() for p in ft.paraphraser.parameters()]
    backward_once(regime, batch, phase_index=0)
    init_opt.step()
    assert ft.paraphraser.training
    assert any(not torch.equal(a, p) for a, p in zip(before, ft.paraphraser.parameters()))  # it trained
    # main stage: the optimizer is built from the bundle before the first step, as the engine does
    main_opt = torch.optim.SGD([p for p in main.params if p.requires_grad], lr=0.1, momentum=0.9,
                               weight_decay=5e-4)
    frozen = [p.detach().clone() for p in ft.paraphraser.parameters()]
    for _ in range(2):
        backward_once(regime, batch)
        main_opt.step()
    assert not ft.paraphraser.training  # eval mode survives regime.train(True)
    assert all(not p.requires_grad for p in ft.paraphraser.parameters())
    assert all(torch.equal(a, p) for a, p in zip(frozen, ft.paraphraser.parameters()))
    assert ft.translator.training


def test_fsp_incompatible_pair_fails_at_build(teachers):
    with pytest.raises(IncompatiblePairError, match="fsp: .*channels"):
        build_regime(teachers, "ShuffleV1", "resnet32x4", loss={"ce": 1.0, "fsp": 50.0})


def test_fsp_incompatible_pair_through_cli_exits_2_with_one_line(digits_teacher_32x4, tmp_path, capsys):
    code = run_cli("distill", "-c", CONFIGS / "digits" / "fsp.yaml", "--out", tmp_path / "x",
                   f"teacher.checkpoint={digits_teacher_32x4}", "student.arch=ShuffleV1", *FAST)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "fsp" in err and "[24, 240, 480, 960]" in err, err


# One short digits run per method and pair through the CLI -------------------------------------------------------
CLI_CASES = [("vid", "resnet8x4"), ("vid", "ShuffleV1"), ("ab", "resnet8x4"), ("ab", "ShuffleV1"),
             ("ft", "resnet8x4"), ("ft", "ShuffleV1"), ("fsp", "resnet8x4")]


@pytest.mark.parametrize("method,student", CLI_CASES)
def test_digits_run_through_cli(digits_teacher_32x4, tmp_path, method, student):
    out = tmp_path / "x"
    epochs = 2 if student == "resnet8x4" else 1
    extra = [f"methods.{method}.init_epochs=1"] if method in STAGED else []
    if method == "ft":
        # The 1-epoch fixture teacher's last maps are ~20x larger than a trained one's (mean square ~350 against
        # ~0.6 for the 30-epoch digits teacher): an SGD autoencoder at the run's lr diverges on them.
        extra.append("methods.ft.init_lr=0.001")
    last = run_digits(method, digits_teacher_32x4, out, f"student.arch={student}", "dataset.subset=200",
                      "engine.threads=1", f"epochs={epochs}", *extra)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    phases = [(r["phase"], r["epoch"]) for r in records]
    if method in STAGED:
        assert phases == [(f"init:{method}", 1)] + [("main", e + 1) for e in range(epochs)]
        assert math.isfinite(records[0][f"train_{method}"])
        assert "test_top1" not in records[0] and "test_top1" in last
    else:
        assert phases == [("main", e + 1) for e in range(epochs)]
    if method in ("vid", "ft"):
        assert math.isfinite(last[f"train_{method}"])
    else:
        assert f"train_{method}" not in last  # AB and FSP act only in their init stage
