"""ND / KD++ (WangYZ1608/Knowledge-Distillation-via-ND): equal to the original DirectNormLoss (and EmbTrans projector)
on held-out random embeddings (tests/fixtures/nd_reference.json says how those numbers were made), hand-checked
cases, the class means from the epoch pass, published weights, and gradients that reach only the student side."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from kdzoo.core.batch import Batch, Binding
from kdzoo.distillers import METHODS
from kdzoo.distillers.nd import EmbeddingProjector, class_means, nd_loss
from kdzoo.errors import ConfigError
from kdzoo.models.features import Features
from tests.conftest import REPO
from tests.method_harness import (
    EpochRuntime,
    assert_gradient_routing,
    build_regime,
    probed_pair,
    random_batch,
    setup_context,
    step_info,
)

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "nd_reference.json").read_text())


def _inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    s = torch.randn(case["n"], case["ds"], generator=g, dtype=torch.float64) * case["s_scale"]
    t = torch.randn(case["n"], case["dt"], generator=g, dtype=torch.float64) * case["t_scale"]
    centers = torch.randn(case["c"], case["dt"], generator=g, dtype=torch.float64)
    y = torch.randint(0, case["c"], (case["n"],), generator=g)
    s = s + case["align"] * centers[y] if case["align"] else s
    if case["model"] is not None:
        projector = EmbeddingProjector(case["ds"], case["dt"]).double()
        with torch.no_grad():
            projector[2].weight.copy_(torch.randn(case["dt"], case["ds"], generator=g, dtype=torch.float64) * 0.1)
        projector.train()
        torch.manual_seed(case["seed"])  # the dropout mask, as drawn in the reference run
        s = projector(s)
    return s, t, centers, y


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"seed{c['seed']}-{c['ds']}to{c['dt']}")
def test_nd_equals_the_original_code(case):
    s, t, centers, y = _inputs(case)
    assert nd_loss(s, t, centers, y).item() == pytest.approx(case["nd"], rel=1e-5)


def test_nd_by_hand_and_its_norm_branch():
    """Row 1: |s| = 5 > |t| = 1: 1 - 3/5. Row 2: |t| = 2 > |s| = 1: 1 - 1/2, and the gradient pushes s along the
    centre by 1/|t| (the norm term); row 1's gradient is orthogonal to s (direction only)."""
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    centers = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    loss = nd_loss(s, t, centers, torch.tensor([0, 0]))
    assert loss.item() == pytest.approx((0.4 + 0.5) / 2)
    loss.backward()
    torch.testing.assert_close(s.grad[1], torch.tensor([-0.25, 0.0]))
    assert abs(float(s.grad[0] @ s.detach()[0])) < 1e-6 and s.grad[0].abs().sum() > 0


def test_class_means_by_hand():
    emb = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [5.0, 5.0]])
    means = class_means(emb, torch.tensor([0, 0, 2, 0]), 4)
    torch.testing.assert_close(means, torch.tensor([[3.0, 11 / 3], [0.0, 0.0], [10.0, 0.0], [0.0, 0.0]]))


def test_published_defaults_and_weights():
    cls = METHODS.get("nd")
    assert cls.Params().centers == "class_mean"
    assert cls.recipes.loss == {"ce": 1.0, "kd": 3.5, "nd": 2.0}  # KD++ resnet32x4 -> resnet8x4
    assert METHODS.get("kd").Params().T == 4.0  # KDLoss(T=4.0) of train_cifar_kd.py
    assert cls.pair_overrides("resnet56", "resnet20") == {"loss": {"kd": 1.0, "nd": 2.0}}
    assert cls.pair_overrides("resnet32x4", "ShuffleV2") == {"loss": {"kd": 4.0, "nd": 0.5}}
    assert cls.pair_overrides("resnet32x4", "resnet8x4") == {}
    assert cls.requires.epoch_passes and cls.requires.live_teacher


PAIRS: dict = {}


def _pair(student, teacher):
    if (student, teacher) not in PAIRS:
        PAIRS[(student, teacher)] = probed_pair(student, teacher)
    return PAIRS[(student, teacher)]


def _method(student="resnet8", teacher="resnet8x4", **params):
    s_model, t_model, s_shapes, t_shapes = _pair(student, teacher)
    ctx = dataclasses.replace(setup_context(s_shapes, t_shapes, s_model), teacher=t_model,
                              train_targets=torch.arange(40) % 10)
    return METHODS.get("nd")(METHODS.get("nd").Params(**params), ctx), s_shapes, t_shapes


def test_projector_only_where_the_widths_differ():
    same, _, _ = _method("resnet8", "resnet14")  # 64 and 64
    assert same.projector is None and not list(same.parameters())
    projected, _, _ = _method("resnet8", "resnet8x4")  # 64 -> 256
    bn, drop, linear = projected.projector
    assert (bn.num_features, drop.p, linear.in_features, linear.out_features) == (64, 0.5, 64, 256)
    assert not linear.bias.any() and (bn.weight == 1).all()


class FakePasses:
    def __init__(self, embedding):
        self.embedding, self.calls = embedding, 0

    def embed(self, network, what="pooled"):
        assert (network, what) == ("teacher", "pooled")
        self.calls += 1
        return self.embedding


def test_centres_are_the_teachers_class_means_computed_once():
    method, _, _ = _method()
    s, t = Features(pooled=torch.randn(4, 64)), Features(pooled=torch.randn(4, 256))
    batch = Batch(inputs=torch.zeros(4, 3, 32, 32), targets=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(RuntimeError, match="no class centres"):
        method.losses(batch, s, t, step_info())
    passes = FakePasses(torch.randn(40, 256))
    assert "nd_centers_s" in method.on_epoch_start(0, passes)
    assert method.on_epoch_start(1, passes) is None and passes.calls == 1
    torch.testing.assert_close(method.centers[3], passes.embedding[3::10].mean(0))
    with pytest.raises(ConfigError, match="40 training labels"):
        _method()[0].on_epoch_start(0, FakePasses(torch.randn(39, 256)))


@pytest.mark.parametrize("how", ["refresh", "peer"])
def test_a_moving_teacher_gets_new_class_means_every_epoch(how):
    method = _method(refresh=how == "refresh")[0]
    if how == "peer":
        method.bind(Binding(detach_teacher=True))  # mutual learning: the teacher is a training peer
    passes = FakePasses(torch.randn(40, 256))
    method.on_epoch_start(0, passes)
    passes.embedding = torch.randn(40, 256)
    method.on_epoch_start(1, passes)
    assert passes.calls == 2
    torch.testing.assert_close(method.centers[0], passes.embedding[0::10].mean(0))


def test_gradients_reach_the_student_and_projector_never_the_teacher():
    method, _, _ = _method(centers="head")
    method.train(True)
    head = method.teacher_head.module
    s = Features(pooled=torch.randn(8, 64, requires_grad=True))
    t = Features(pooled=torch.randn(8, 256, requires_grad=True))
    batch = Batch(inputs=torch.zeros(8, 3, 32, 32), targets=torch.arange(8))
    method.losses(batch, s, t, step_info())["nd"].backward()
    assert s.pooled.grad.abs().sum() > 0 and t.pooled.grad is None and head.weight.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.projector.parameters())
    assert not [n for n, _ in method.named_parameters() if not n.startswith("projector.")]  # head: not registered


def test_head_centres_are_the_teacher_classifier_rows():
    method, _, _ = _method("resnet8", "resnet14", centers="head")
    assert method.class_centers() is method.teacher_head.module.weight
    s_model, t_model, s_shapes, t_shapes = _pair("resnet8", "resnet14")
    ctx = dataclasses.replace(setup_context(s_shapes, t_shapes, s_model), teacher=t_model,
                              teacher_logits_trained=False)
    with pytest.raises(ConfigError, match="never trained"):
        METHODS.get("nd")(METHODS.get("nd").Params(centers="head"), ctx)


def test_kd_plus_plus_in_a_real_regime(tmp_path):
    """The epoch pass runs the live teacher over the probe images; then CE + KD + ND train student and projector."""
    r = build_regime(tmp_path, "resnet8", "resnet8x4", {"ce": 1.0, "kd": 3.5, "nd": 2.0}, n_train=30)
    method = r.methods["nd"]
    stats = r.phases()[-1].on_epoch_start(0, EpochRuntime(r.program))
    assert stats["nd_centers_s"] >= 0 and method.centers.shape == (10, 256)
    probe = r.program.data["probe"].dataset
    images = torch.stack([probe[i][0] for i in (3, 13, 23)])  # the class-3 images (labels i % 10)
    r.teacher.model.eval()
    torch.testing.assert_close(method.centers[3], r.teacher(images).pooled.mean(0), atol=1e-4, rtol=1e-4)
    terms = assert_gradient_routing(r, random_batch(r))
    assert set(terms) == {"ce", "kd", "nd"} and 0 < float(terms["nd"].detach()) < 2
