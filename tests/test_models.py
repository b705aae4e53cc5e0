"""The model zoo: RepDistiller-identical layouts, feature specs, small inputs, torchvision/timm by prefix.

Expected shapes, parameter counts and state_dict keys below were read off HobbitLong/RepDistiller models/
(`is_feat=True` feature lists for 32x32 inputs, CIFAR-100 heads; anchors.md for the counts).
"""
from __future__ import annotations

import sys
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdzoo.errors import KdzooError
from kdzoo.models import (
    FeatureModel,
    Needs,
    create_model,
    feature_spec,
    get_head,
    list_models,
)
from kdzoo.models.shufflenetv2 import ShuffleBlock

_R = [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
_RX4 = [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)]
_W2 = [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)]
_VGG = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]
_R18 = [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]

# name: (parameters with 100 classes, stage shapes (C, H, W) for a 32x32 input, pooled dim)
ZOO = {
    "resnet8": (83_892, _R, 64),
    "resnet14": (181_108, _R, 64),
    "resnet20": (278_324, _R, 64),
    "resnet32": (472_756, _R, 64),
    "resnet44": (667_188, _R, 64),
    "resnet56": (861_620, _R, 64),
    "resnet110": (1_736_564, _R, 64),
    "resnet8x4": (1_233_540, _RX4, 256),
    "resnet32x4": (7_433_860, _RX4, 256),
    "wrn_16_1": (180_916, _R, 64),
    "wrn_16_2": (703_284, _W2, 128),
    "wrn_40_1": (569_780, _R, 64),
    "wrn_40_2": (2_255_156, _W2, 128),
    "vgg8": (3_965_028, _VGG, 512),
    "vgg11": (9_277_284, _VGG, 512),
    "vgg13": (9_462_180, _VGG, 512),
    "vgg16": (14_774_436, _VGG, 512),
    "vgg19": (20_086_692, _VGG, 512),
    "MobileNetV2": (812_836, [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)], 1280),
    "ShuffleV1": (949_258, [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)], 960),
    "ShuffleV2": (1_355_528, [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4)], 1024),
    # Not in anchors.md: counted on the original code (SimKD's ShuffleNetv2.py, RepDistiller's resnetv2.py).
    "ShuffleV2_1_5": (2_580_548, [(24, 32, 32), (176, 16, 16), (352, 8, 8), (704, 4, 4)], 1024),
    "ResNet18": (11_220_132, _R18, 512),
    "ResNet34": (21_328_292, _R18, 512),
    "ResNet50": (23_705_252, [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)], 2048),
}

# Architectures whose every stage with a preact module ends in ReLU(preact) (the block's last ReLU).
RELU_OF_PREACT = [n for n in ZOO if n.startswith(("resnet", "vgg", "ShuffleV1", "ResNet"))]
# Architectures whose head pools the last stage map directly.
POOLS_LAST_STAGE = RELU_OF_PREACT


@lru_cache(maxsize=None)
def zoo_model(name: str) -> nn.Module:
    """One eval-mode model per architecture (100 classes, RGB), shared by the tests: keep it unchanged."""
    torch.manual_seed(0)
    return create_model(name, num_classes=100).eval()


def features(model: nn.Module, x: torch.Tensor):
    fm = FeatureModel(model, Needs(logits=True, pooled=True, stages=True, preact=True))
    try:
        with torch.no_grad():
            return fm(x)
    finally:
        fm.remove_hooks()


CIFAR_BATCH = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@lru_cache(maxsize=None)
def zoo_features(name: str):
    """Features of a 32x32 batch, computed once per architecture and shared by the tests below."""
    return features(zoo_model(name), CIFAR_BATCH)


def test_every_architecture_is_registered():
    assert set(ZOO) <= set(list_models())


@pytest.mark.parametrize("name", list(ZOO))
def test_parameter_count_matches_repdistiller(name):
    assert sum(p.numel() for p in zoo_model(name).parameters()) == ZOO[name][0]


@pytest.mark.parametrize("name", list(ZOO))
def test_forward_on_cifar_fashion_mnist_and_digits_shapes(name):
    torch.manual_seed(0)
    # Grayscale inputs in train mode: BatchNorm then needs more than one value per channel on the tiny maps.
    grayscale = create_model(name, num_classes=100, in_channels=1).train()
    assert grayscale.get_submodule(feature_spec(grayscale).head).out_features == 100
    for model, shape in [(zoo_model(name), (2, 3, 32, 32)), (grayscale, (2, 1, 28, 28)), (grayscale, (2, 1, 8, 8))]:
        with torch.no_grad():
            logits = model(torch.randn(shape))
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, 100), (name, shape)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list(ZOO))
def test_feature_spec_stages_pooled_and_head(name):
    _, stage_shapes, pooled_dim = ZOO[name]
    model = zoo_model(name)
    spec = feature_spec(model)
    assert len(spec.preact) == len(spec.stages) == len(stage_shapes)
    head = get_head(model)
    assert isinstance(head, nn.Linear) and head.in_features == pooled_dim

    f = zoo_features(name)
    assert [tuple(s.shape[1:]) for s in f.stages] == stage_shapes
    assert [p.shape for p in f.preact] == [s.shape for s in f.stages]
    assert f.pooled.shape == (2, pooled_dim)
    with torch.no_grad():
        torch.testing.assert_close(head(f.pooled), f.logits)
        torch.testing.assert_close(model(CIFAR_BATCH), f.logits)  # hooks observe, they do not change the output
    if name in POOLS_LAST_STAGE:  # adaptive pooling equals the original fixed-size average pool on 32x32
        torch.testing.assert_close(f.pooled, f.stages[-1].mean(dim=(2, 3)))


@pytest.mark.parametrize("name", list(ZOO))
def test_preact_features(name):
    model = zoo_model(name)
    spec = feature_spec(model)
    f = zoo_features(name)
    for module, stage, pre in zip(spec.preact, f.stages, f.preact):
        if module is None:
            assert pre is stage
            continue
        assert not torch.equal(pre, stage)
        assert (pre < 0).any()
        if name in RELU_OF_PREACT:
            torch.testing.assert_close(F.relu(pre), stage)


def test_wrn_preact_is_the_next_batchnorm_as_in_repdistiller():
    model = zoo_model("wrn_40_2")
    f = zoo_features("wrn_40_2")
    next_bns = [model.block2.layer[0].bn1, model.block3.layer[0].bn1, model.bn1]
    with torch.no_grad():
        for stage, pre, bn in zip(f.stages[1:], f.preact[1:], next_bns):
            torch.testing.assert_close(pre, bn(stage))
    assert f.preact[0] is f.stages[0]


def test_shufflev2_preact_is_unshuffled_concat_as_in_repdistiller():
    f = zoo_features("ShuffleV2")
    for stage, pre in zip(f.stages[1:], f.preact[1:]):
        torch.testing.assert_close(ShuffleBlock(2)(F.relu(pre)), stage)


# Keys sampled from RepDistiller's state_dicts (and their total number), so published checkpoints load strictly.
STATE_DICT_SAMPLES = {
    "resnet8x4": (62, ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.bn2.bias",
                       "layer2.0.downsample.0.weight", "layer3.0.downsample.1.num_batches_tracked", "fc.weight",
                       "fc.bias"]),
    "resnet20": (128, ["layer3.2.bn2.num_batches_tracked", "layer1.2.conv2.weight", "fc.weight"]),
    "wrn_40_2": (227, ["conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
                       "block3.layer.5.conv2.weight", "bn1.num_batches_tracked", "fc.weight"]),
    "wrn_16_1": (82, ["block2.layer.0.convShortcut.weight", "block1.layer.1.bn2.running_var", "fc.bias"]),
    "vgg13": (72, ["block0.0.weight", "block0.1.running_mean", "block0.3.weight", "block4.4.num_batches_tracked",
                   "classifier.weight"]),
    "vgg8": (37, ["block0.0.bias", "block4.1.num_batches_tracked", "classifier.bias"]),
    "MobileNetV2": (320, ["conv1.0.weight", "blocks.0.0.conv.0.weight", "blocks.6.0.conv.7.running_var",
                          "conv2.1.num_batches_tracked", "classifier.0.weight"]),
    "ShuffleV1": (296, ["conv1.weight", "layer1.0.conv1.weight", "layer3.3.bn3.num_batches_tracked",
                        "linear.weight"]),
    "ShuffleV2": (338, ["layer1.0.conv5.weight", "layer1.0.bn1.num_batches_tracked", "layer1.1.conv3.weight",
                        "bn2.num_batches_tracked", "linear.bias"]),
    "ResNet50": (320, ["layer1.0.shortcut.0.weight", "layer4.2.bn3.num_batches_tracked", "linear.weight"]),
}


@pytest.mark.parametrize("name", list(STATE_DICT_SAMPLES))
def test_state_dict_keys_match_repdistiller(name):
    count, sample = STATE_DICT_SAMPLES[name]
    model = zoo_model(name)
    keys = list(model.state_dict())
    assert len(keys) == count
    assert set(sample) <= set(keys)
    head = feature_spec(model).head
    assert keys[-2:] == [f"{head}.weight", f"{head}.bias"]  # same order too: the classifier comes last


def test_checkpoint_round_trip_is_strict():
    src, dst = create_model("resnet8x4", 100), create_model("resnet8x4", 100)
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(src.eval()(x), dst.eval()(x))


def test_in_channels_sets_first_conv():
    assert create_model("resnet20", 10, in_channels=1).conv1.in_channels == 1
    assert create_model("vgg8", 10, in_channels=1).block0[0].in_channels == 1
    assert create_model("MobileNetV2", 10, in_channels=1).conv1[0].in_channels == 1


def test_torchvision_resnet18_grayscale_with_features():
    model = create_model("tv:resnet18", num_classes=10, in_channels=1).eval()
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 64 and model.conv1.stride == (2, 2)
    assert model.kdzoo_arch == "tv:resnet18"
    spec = feature_spec(model)
    assert spec.stages == ("relu", "layer1", "layer2", "layer3", "layer4") and spec.head == "fc"
    assert spec.preact[1:] == ("layer1.1.relu", "layer2.1.relu", "layer3.1.relu", "layer4.1.relu")
    f = features(model, torch.randn(2, 1, 28, 28))
    assert f.logits.shape == (2, 10)
    assert [tuple(s.shape[1:]) for s in f.stages] == [(64, 14, 14), (64, 7, 7), (128, 4, 4), (256, 2, 2),
                                                      (512, 1, 1)]
    torch.testing.assert_close(model.fc(f.pooled), f.logits)
    for stage, pre in zip(f.stages[1:], f.preact[1:]):
        assert (pre < 0).any()  # the post-addition value, before the block's last ReLU
        torch.testing.assert_close(F.relu(pre), stage)


@pytest.mark.parametrize("name, stages, head", [
    ("tv:mobilenet_v2", ("features.1", "features.3", "features.6", "features.13", "features.17"), "classifier.1"),
    ("tv:efficientnet_b0", ("features.1", "features.2", "features.3", "features.5", "features.7"), "classifier.1"),
    ("tv:shufflenet_v2_x0_5", ("conv1", "stage2", "stage3", "stage4"), "fc"),
])
def test_torchvision_feature_specs(name, stages, head):
    model = create_model(name, num_classes=10).eval()
    spec = feature_spec(model)
    assert spec.stages == stages and spec.head == head
    f = features(model, torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(get_head(model)(f.pooled), f.logits)


def test_unknown_names_raise_kdzoo_error():
    with pytest.raises(KdzooError, match="unknown model"):
        create_model("resnet21", num_classes=10)
    with pytest.raises(KdzooError, match="unknown model 'tv:foo'"):
        create_model("tv:foo", num_classes=10)


def test_timm_missing_gives_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(KdzooError, match="pip install timm"):
        create_model("timm:resnet18", num_classes=10)


def test_unknown_model_class_has_no_spec():
    with pytest.raises(KdzooError, match="no feature spec"):
        feature_spec(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))
