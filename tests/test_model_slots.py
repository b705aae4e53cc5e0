"""Model-slot pieces the regimes share: freezing by prefix, partial (backbone-only) loads, EMA of a network."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdzoo.errors import CheckpointError, ConfigError
from kdzoo.models import create_model
from kdzoo.models.ema import EMA, ema_update
from kdzoo.models.freezing import freeze, trainable_parameters
from kdzoo.models.partial_load import load_matching


def test_frozen_prefix_stays_bit_identical_through_training():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_channels=1)
    frozen = freeze(model, ["conv1", "bn1", "layer1"])
    assert frozen and all(n.startswith(("conv1.", "bn1.", "layer1.")) for n in frozen)
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.5, momentum=0.9, weight_decay=5e-4)
    model.train()
    assert not model.layer1.training and not model.bn1.training and model.layer2.training
    for _ in range(3):
        x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith(("conv1.", "bn1.", "layer1.")):
            assert torch.equal(after[key], value), key  # weights and BN statistics alike
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert not torch.equal(after["layer2.0.bn1.running_mean"], before["layer2.0.bn1.running_mean"])
    clone = copy.deepcopy(model).train()
    assert not clone.layer1.training  # the eval pin survives a copy


def test_freeze_refuses_an_unknown_prefix():
    model = create_model("resnet8", num_classes=10)
    with pytest.raises(ConfigError, match=r"'backbone' is not a module of CifarResNet \(top level: conv1, bn1"):
        freeze(model, ["backbone"])


def test_backbone_load_into_a_model_with_a_new_head():
    torch.manual_seed(0)
    trained = create_model("resnet8", num_classes=10)
    fresh = create_model("resnet8", num_classes=100)
    head = fresh.fc.weight.clone()
    report = load_matching(fresh, trained.state_dict(), "teacher.safetensors")
    assert sorted(report.reshaped) == ["fc.bias", "fc.weight"] and not report.unexpected
    assert sorted(report.missing) == ["fc.bias", "fc.weight"]
    assert torch.equal(fresh.fc.weight, head)  # the new head keeps its initialisation
    assert torch.equal(fresh.layer3[0].conv1.weight, trained.layer3[0].conv1.weight)
    assert "skipped (another shape): fc.weight, fc.bias" in report.summary() or \
        "skipped (another shape): fc.bias, fc.weight" in report.summary()


def test_load_under_a_prefix_and_nothing_fitting():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = create_model("resnet8", num_classes=10)
            self.aux = nn.Linear(64, 40)

    plain = create_model("resnet8", num_classes=10)
    wrapped = Wrapped()
    report = load_matching(wrapped, plain.state_dict(), "plain", prefix="backbone.")
    assert not report.unexpected and not report.reshaped
    assert sorted(report.missing) == ["aux.bias", "aux.weight"]
    assert torch.equal(wrapped.backbone.fc.weight, plain.fc.weight)
    with pytest.raises(CheckpointError, match="no tensor fits"):
        load_matching(nn.Linear(3, 3), plain.state_dict(), "plain")


def test_ema_update_by_hand():
    source, target = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        source.weight.copy_(torch.tensor([1.0, 3.0]))
        target.weight.copy_(torch.tensor([0.0, 1.0]))
        source.running_mean.copy_(torch.tensor([2.0, 4.0]))
        source.num_batches_tracked.fill_(7)
    ema_update(target, source, decay=0.9)
    assert torch.allclose(target.weight, torch.tensor([0.1, 1.2]))  # 0.9 * t + 0.1 * s
    assert torch.equal(target.running_mean, torch.tensor([2.0, 4.0])) and target.num_batches_tracked == 7
    ema_update(target, source, decay=0.5, buffers="ema")
    assert torch.allclose(target.weight, torch.tensor([0.55, 2.1]))
    assert torch.equal(target.running_mean, torch.tensor([2.0, 4.0]))  # already equal: the average stays
    with torch.no_grad():
        source.running_var.fill_(3.0)
    ema_update(target, source, decay=0.5, buffers="keep")
    assert torch.equal(target.running_var, torch.ones(2))
    ema_update(target, source, decay=0.5, buffers="ema")
    assert torch.equal(target.running_var, torch.full((2,), 2.0))
    with pytest.raises(ValueError, match="decay"):
        ema_update(target, source, decay=1.5)


def test_ema_module_follows_its_source_after_each_optimizer_step():
    torch.manual_seed(0)
    online = nn.Linear(4, 2)
    ema = EMA(online, decay=0.99)
    assert set(ema.state_dict()) == {"target.weight", "target.bias"}  # the source is not saved twice
    assert not any(p.requires_grad for p in ema.target.parameters())
    start = ema.target.weight.clone()
    optimizer = torch.optim.SGD(online.parameters(), lr=1.0)
    online(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    ema.update()
    assert torch.allclose(ema.target.weight, 0.99 * start + 0.01 * online.weight)
    assert ema(torch.ones(1, 4)).shape == (1, 2)
