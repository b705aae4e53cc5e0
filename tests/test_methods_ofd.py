"""OFD (megvii-research/mdistiller OFD.py): the BatchNorm found before each stage's ReLU is the one mdistiller's
get_bn_before_relu names, margins, partial L2 and the whole loss equal the original code's numbers
(tests/fixtures/ofd_reference.json says how they were made), hand-checked cases, published defaults, and gradients
that reach only the student's maps and the connectors."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from kdzoo.core.batch import Batch
from kdzoo.distillers import METHODS
from kdzoo.distillers.ofd import OFDParams, bn_margin, ofd_loss, partial_l2
from kdzoo.errors import IncompatiblePairError
from kdzoo.models import create_model
from kdzoo.models.bn_before_relu import bn_before_relu
from kdzoo.models.features import Features, FeatureSpec
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

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "ofd_reference.json").read_text())
OFD = METHODS.get("ofd")
CIFAR_ARCHS = [a for a in REFERENCE["bn_before_relu"] if not a.startswith("imagenet_")]


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_the_bn_before_each_stage_is_mdistillers(arch):
    model = create_model(arch, num_classes=100, in_channels=3)
    assert bn_before_relu(model)[1:] == REFERENCE["bn_before_relu"][arch]  # [0]: the stem, a ReLU output


def test_the_bn_before_each_stage_of_a_torchvision_resnet_is_mdistillers():
    arch = "ResNet18"  # the Bottleneck case: kdzoo's CIFAR ResNet50 above
    model = tvm.resnet18()
    # mdistiller's ImageNet ResNets list layer2..layer4 only
    assert bn_before_relu(model, input_shape=(3, 64, 64))[2:] == REFERENCE["bn_before_relu"][f"imagenet_{arch}"]


def test_shufflenets_v1_has_its_last_bn3_and_v2_none():
    assert bn_before_relu(create_model("ShuffleV1", num_classes=10)) == [None, "layer1.3.bn3", "layer2.7.bn3",
                                                                          "layer3.3.bn3"]
    assert bn_before_relu(create_model("ShuffleV2", num_classes=10)) == [None] * 4  # concatenations


class MdistillerOrderBlock(nn.Module):
    """RepDistiller's block: the projection shortcut (conv + BN) runs after bn2, so its BN is the last one called."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, 2), nn.BatchNorm2d(cout))
        self.relu_out = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out += self.downsample(x)
        return self.relu_out(out)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.relu = nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU()
        self.layer1, self.layer2 = MdistillerOrderBlock(4, 8), MdistillerOrderBlock(8, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.stem(x))))
        return self.fc(x.mean((2, 3)))

    def feature_spec(self):
        return FeatureSpec(stages=("relu", "layer1", "layer2"), head="fc",
                           preact=(None, "layer1.relu_out", "layer2.relu_out"))


def test_the_main_branch_wins_over_a_shortcut_bn_called_later_and_the_model_is_left_alone():
    model = TinyNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert bn_before_relu(model, input_shape=(3, 8, 8)) == [None, "layer1.bn2", "layer2.bn2"]
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("case", REFERENCE["margins"], ids=lambda c: f"seed{c['seed']}-c{c['c']}")
def test_margins_equal_the_original_code(case):
    g = torch.Generator().manual_seed(case["seed"])
    gamma = torch.randn(case["c"], generator=g) * case["gamma_scale"]
    beta = torch.randn(case["c"], generator=g) * case["beta_scale"]
    gamma = torch.cat([gamma, torch.tensor(case["edge_gamma"])])
    beta = torch.cat([beta, torch.tensor(case["edge_beta"])])
    assert bn_margin(gamma, beta).tolist() == pytest.approx(case["margin"], rel=1e-5)


def test_margins_by_hand():
    # N(0, s^2): E[x | x < 0] = -s * sqrt(2 / pi); far above 0 (P(x < 0) <= 0.001): -3s; a zero weight: the bias
    # where it is negative, else 0 (the original divides by zero there)
    m = bn_margin(torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0], dtype=torch.float64),
                  torch.tensor([0.0, 0.0, 2.0, -0.3, 0.4], dtype=torch.float64))
    expected = [-math.sqrt(2 / math.pi), -2 * math.sqrt(2 / math.pi), -1.5, -0.3, 0.0]
    assert m.tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("case", REFERENCE["feat_loss"], ids=lambda c: f"seed{c['seed']}")
def test_partial_l2_equals_the_original_code(case):
    g = torch.Generator().manual_seed(case["seed"])
    shape = case["shape"]
    source = torch.randn(*shape, generator=g, dtype=torch.float64) * case["scale"]
    target = torch.randn(*shape, generator=g, dtype=torch.float64) * case["scale"]
    margin = -torch.randn(shape[1], generator=g, dtype=torch.float64).abs().view(1, -1, 1, 1) * 0.7
    assert partial_l2(source, target, margin).item() == pytest.approx(case["loss"], rel=1e-5)


def test_partial_l2_by_hand():
    # margin -1; (student, teacher) per channel: below the margin -> margin target; no loss where the student is
    # under a non-positive target; a positive target is matched both ways
    s = torch.tensor([0.5, -1.5, 0.3, -0.7, 0.2, 2.0]).view(1, 6, 1, 1)
    t = torch.tensor([-2.0, -2.0, -0.5, -0.5, 1.0, 1.0]).view(1, 6, 1, 1)
    margin = torch.full((1, 6, 1, 1), -1.0)
    assert partial_l2(s, t, margin).item() == pytest.approx(1.5**2 + 0.8**2 + 0.8**2 + 1.0**2)
    # a mean over the batch, a sum over channels and positions; the last stage weighs 1, the one before 1/2
    assert partial_l2(s.repeat(2, 1, 3, 3), t.repeat(2, 1, 3, 3), margin).item() == pytest.approx(9 * 4.53)
    two = ofd_loss([s, s], [t, t], [margin, margin]).item()
    assert two == pytest.approx(1.5 * 4.53)


def _case_method(case, student="resnet8", teacher="resnet8x4"):
    """kdzoo's OFD on the fixture's seeded teacher BN weights, connector weights and maps (float64)."""
    g = torch.Generator().manual_seed(case["seed"])
    k = case["kernel"]
    gammas = [torch.randn(c, generator=g) * 0.5 for c, _ in case["t"]]
    betas = [torch.randn(c, generator=g) * 0.5 for c, _ in case["t"]]
    weights = [torch.randn(tc, sc, k, k, generator=g, dtype=torch.float64) * math.sqrt(2.0 / (k * k * tc))
               for (sc, _), (tc, _) in zip(case["s"], case["t"])]
    s_maps = [torch.randn(case["n"], c, h, h, generator=g, dtype=torch.float64) for c, h in case["s"]]
    t_maps = [torch.randn(case["n"], c, h, h, generator=g, dtype=torch.float64) for c, h in case["t"]]
    s_model, t_model, s_shapes, t_shapes = probed_pair(student, teacher)
    for layer, gamma, beta in zip((t_model.layer1, t_model.layer2, t_model.layer3), gammas, betas):
        layer[-1].bn2.weight.data.copy_(gamma)  # resnet8x4: mdistiller's layerK[-1].bn2
        layer[-1].bn2.bias.data.copy_(beta)
    ctx = dataclasses.replace(setup_context(s_shapes, t_shapes, s_model), teacher=t_model)
    method = OFD(OFDParams(connector_kernel=k), ctx).double().train()
    for conn, w in zip(method.connectors, weights):
        conn[0].weight.data.copy_(w)
    nan = torch.full((1,), math.nan)
    s_feats = Features(preact=[nan] * (len(s_shapes.preact) - len(s_maps)) + s_maps)
    t_feats = Features(preact=[nan] * (len(t_shapes.preact) - len(t_maps)) + t_maps)
    return method, s_feats, t_feats


@pytest.mark.parametrize("case", REFERENCE["ofd"], ids=lambda c: f"seed{c['seed']}-k{c['kernel']}")
def test_the_ofd_loss_equals_the_original_code(case):
    student = "vgg8" if case["s"][0][0] == 256 else "resnet8"
    method, s, t = _case_method(case, student)
    batch = Batch(inputs=torch.zeros(case["n"], 3, 32, 32), targets=torch.zeros(case["n"], dtype=torch.long))
    assert method.losses(batch, s, t, step_info())["ofd"].item() == pytest.approx(case["loss"], rel=1e-5)


def test_gradients_reach_the_used_student_maps_and_the_connectors_only():
    case = REFERENCE["ofd"][0]
    method, s, t = _case_method(case)
    s.preact = [m.clone().requires_grad_(True) for m in s.preact]
    t.preact = [m.clone().requires_grad_(True) for m in t.preact]
    method.losses(None, s, t, step_info())["ofd"].backward()
    assert s.preact[0].grad is None and all(m.grad.abs().sum() > 0 for m in s.preact[1:])
    assert all(m.grad is None for m in t.preact)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.connectors.parameters())


def test_margins_are_buffers_read_once_from_the_teacher_bns():
    s_model, t_model, s_shapes, t_shapes = probed_pair("resnet8", "resnet8x4")
    t_model.layer2[0].bn2.bias.data.fill_(-1.0)  # N(-1, 1): E[x | x < 0] = -1 - phi(1) / Phi(1)
    ctx = dataclasses.replace(setup_context(s_shapes, t_shapes, s_model), teacher=t_model)
    method = OFD(OFDParams(), ctx)
    assert method.teacher_bns == ["layer1.0.bn2", "layer2.0.bn2", "layer3.0.bn2"]
    assert {"margin0", "margin1", "margin2"} <= set(method.state_dict())
    assert method.margin1.shape == (1, 128, 1, 1)
    phi, cdf = math.exp(-0.5) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert method.margin1.flatten().tolist() == pytest.approx([-1 - phi / cdf] * 128, rel=1e-6)
    t_model.layer2[0].bn2.bias.data.fill_(3.0)  # read at setup, not later
    assert method.margin1[0, 0, 0, 0].item() == pytest.approx(-1 - phi / cdf, rel=1e-6)


def test_unequal_stage_counts_keep_the_last_stages_and_their_bns():
    s_model, t_model, s_shapes, t_shapes = probed_pair("resnet8", "vgg8")  # 3 student stages, 4 teacher stages
    ctx = dataclasses.replace(setup_context(s_shapes, t_shapes, s_model), teacher=t_model)
    method = OFD(OFDParams(), ctx)
    assert method.teacher_bns == ["block2.1", "block3.1", "block4.1"]
    assert [(c[0].in_channels, c[0].out_channels) for c in method.connectors] == [(16, 256), (32, 512), (64, 512)]
    assert [method.margins()[i].shape[1] for i in range(3)] == [256, 512, 512]


def test_a_shufflenetv2_teacher_is_refused():
    s_model, t_model, s_shapes, t_shapes = probed_pair("resnet8", "ShuffleV2")
    ctx = dataclasses.replace(setup_context(s_shapes, t_shapes, s_model), teacher=t_model)
    with pytest.raises(IncompatiblePairError, match="no BatchNorm"):
        OFD(OFDParams(), ctx)


def test_published_defaults_and_recipe_weights():
    assert OFD.Params().connector_kernel == 1
    assert OFD.recipes.loss == {"ce": 1.0, "ofd": 0.001}
    assert OFD.student_needs.preact and OFD.teacher_needs.preact and not OFD.teacher_needs.stages
    conn = OFD(OFDParams(), dataclasses.replace(setup_context(*probed_pair("resnet8", "resnet8x4")[2:]),
                                                teacher=create_model("resnet8x4", num_classes=10))).connectors[0]
    assert conn[0].kernel_size == (1, 1) and conn[0].bias is None
    assert torch.all(conn[1].weight == 1) and torch.all(conn[1].bias == 0)


def test_it_trains_in_a_real_regime(tmp_path):
    regime = build_regime(tmp_path, "resnet8", "resnet8x4", {"ce": 1.0, "ofd": 0.001}, n_train=16, batch_size=4)
    terms = assert_gradient_routing(regime, random_batch(regime, batch_size=4))
    assert terms["ofd"].item() > 0
