"""Numeric checks against independent hand computations: ReviewKD's ABF fusion, the SimKD deployed wrapper, and
CRD's momentum memory update at several momenta."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from kdzoo.core.batch import Batch
from kdzoo.distillers import METHODS
from kdzoo.distillers.crd import momentum_update
from kdzoo.distillers.reviewkd import ABF
from kdzoo.models.features import FeatureModel, FeatureSpec, Needs
from kdzoo.models.probe import probe_shapes
from tests.method_harness import setup_context, step_info


def _np(t):
    return t.detach().double().numpy()


# ReviewKD ABF ----------------------------------------------------------------------------------------------------
def _bn_eval_np(x, bn):
    """Eval-mode BatchNorm by its definition: (x - mean) / sqrt(var + eps) * w + b, per channel."""
    m, v = _np(bn.running_mean), _np(bn.running_var)
    w, b = _np(bn.weight), _np(bn.bias)
    return (x - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + bn.eps) * w[None, :, None, None] \
        + b[None, :, None, None]


def _conv1x1_np(x, w, b=None):
    out = np.einsum("oc,bchw->bohw", w[:, :, 0, 0], x)
    return out if b is None else out + b[None, :, None, None]


def _conv3x3_np(x, w):
    """3x3 convolution, zero padding 1, stride 1, no bias, by loops over the kernel offsets."""
    bsz, c, h, wd = x.shape
    pad = np.zeros((bsz, c, h + 2, wd + 2))
    pad[:, :, 1:-1, 1:-1] = x
    out = np.zeros((bsz, w.shape[0], h, wd))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("oc,bchw->bohw", w[:, :, dy, dx], pad[:, :, dy:dy + h, dx:dx + wd])
    return out


def _nearest_np(x, size):
    """Nearest resize: output pixel (i, j) takes source pixel (floor(i * h / H), floor(j * w / W))."""
    h, w = x.shape[-2:]
    rows = [int(math.floor(i * h / size[0])) for i in range(size[0])]
    cols = [int(math.floor(j * w / size[1])) for j in range(size[1])]
    return x[:, :, rows][:, :, :, cols]


def _abf_ref(abf, x, residual, out_size):
    """ABF from the ReviewKD description: y = BN(conv1x1(x)); with a residual r from the deeper level,
    r' = nearest(r, y's size), [a0, a1] = sigmoid(conv1x1([y, r'])), y = y * a0 + r' * a1; y = nearest(y, out_size);
    returns (BN(conv3x3(y)), y)."""
    y = _bn_eval_np(_conv1x1_np(_np(x), _np(abf.conv1[0].weight)), abf.conv1[1])
    if residual is not None:
        r = _nearest_np(_np(residual), y.shape[-2:])
        att = _conv1x1_np(np.concatenate([y, r], axis=1), _np(abf.att_conv[0].weight), _np(abf.att_conv[0].bias))
        att = 1.0 / (1.0 + np.exp(-att))
        y = y * att[:, 0:1] + r * att[:, 1:2]
    if tuple(y.shape[-2:]) != tuple(out_size):
        y = _nearest_np(y, out_size)
    return _bn_eval_np(_conv3x3_np(y, _np(abf.conv2[0].weight)), abf.conv2[1]), y


def _randomise_bn(module, seed):
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)


@pytest.mark.parametrize("x_hw,r_hw,out_hw", [((4, 4), (2, 2), (4, 4)), ((4, 4), (2, 2), (8, 8)),
                                              ((2, 2), (1, 1), (4, 4)), ((6, 6), (3, 3), (6, 6))])
def test_abf_fusion_matches_hand_computation(x_hw, r_hw, out_hw):
    torch.manual_seed(0)
    abf = ABF(in_channels=3, mid_channels=4, out_channels=5, fuse=True)
    # a strong, asymmetric attention so a swap of its two channels changes the result
    with torch.no_grad():
        abf.att_conv[0].weight.normal_(0, 1.0)
        abf.att_conv[0].bias.copy_(torch.tensor([1.5, -1.5]))
    _randomise_bn(abf, 1)
    abf.eval()
    x = torch.randn(2, 3, *x_hw)
    residual = torch.randn(2, 4, *r_hw)
    out, res = abf(x, residual, out_hw)
    ref_out, ref_res = _abf_ref(abf, x, residual, out_hw)
    assert out.shape == (2, 5, *out_hw) and res.shape == (2, 4, *out_hw)
    np.testing.assert_allclose(_np(res), ref_res, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(out), ref_out, rtol=1e-5, atol=1e-5)


def test_abf_deepest_level_has_no_fusion_and_resizes_nearest():
    torch.manual_seed(0)
    abf = ABF(in_channels=6, mid_channels=4, out_channels=3, fuse=False)
    _randomise_bn(abf, 2)
    abf.eval()
    x = torch.randn(2, 6, 1, 1)  # the pooled vector as a 1x1 map
    out, res = abf(x, None, (2, 2))
    ref_out, ref_res = _abf_ref(abf, x, None, (2, 2))
    np.testing.assert_allclose(_np(res), ref_res, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(out), ref_out, rtol=1e-5, atol=1e-5)


def test_nearest_reference_is_not_bilinear():
    """Guard on the reference itself: on a 2x2 -> 4x4 map nearest and bilinear disagree."""
    r = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    near = _nearest_np(_np(r), (4, 4))
    assert near[0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    bil = torch.nn.functional.interpolate(r, size=(4, 4), mode="bilinear", align_corners=False)
    assert not np.allclose(near, _np(bil))


# SimKD deployed wrapper -------------------------------------------------------------------------------------------
class _Tiny(nn.Module):
    """A two-stage convnet with a feature spec; `stride` sets its last map's size."""

    def __init__(self, channels, stride, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(4, channels, 3, stride=stride, padding=1), nn.BatchNorm2d(channels),
                                  nn.ReLU())
        self.fc = nn.Linear(channels, num_classes)

    def feature_spec(self):
        return FeatureSpec(stages=("stem", "body"), head="fc")

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("s_stride,t_stride", [(1, 2), (1, 4), (2, 2)])
def test_simkd_wrapper_equals_training_path_logits(s_stride, t_stride):
    torch.manual_seed(0)
    student, teacher = _Tiny(6, s_stride), _Tiny(8, t_stride)
    example = torch.zeros(2, 3, 16, 16)
    ctx = dataclasses.replace(setup_context(probe_shapes(student, None, example),
                                            probe_shapes(teacher, None, example), student), teacher=teacher)
    cls = METHODS.get("simkd")
    method = cls(cls.Params(), ctx)
    s_feat = FeatureModel(student, Needs(stages=True))
    t_feat = FeatureModel(teacher, Needs(stages=True))
    x = torch.randn(4, 3, 16, 16)
    # a few train-mode passes give the BNs non-trivial running statistics
    student.train(), method.train()
    with torch.no_grad():
        for _ in range(3):
            method.project(s_feat(x).stages[-1], t_feat(x).stages[-1])
    student.eval(), teacher.eval(), method.eval()
    wrapper = method.inference_wrapper(student)
    wrapper.eval()
    with torch.no_grad():
        projected, target = method.project(s_feat(x).stages[-1], t_feat(x).stages[-1])
        train_logits = method.logits(projected)
        deployed = wrapper(x)
        # by hand: pool the student's map to the teacher's size only when larger, project, global mean, head
        f = s_feat(x).stages[-1]
        if f.shape[-1] > target.shape[-1]:
            k = f.shape[-1] // target.shape[-1]
            f = f.unfold(2, k, k).unfold(3, k, k).mean(dim=(-1, -2))
        by_hand = teacher.fc(method.projector(f).mean(dim=(2, 3)))
    assert deployed.shape == (4, 10)
    torch.testing.assert_close(deployed, train_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(deployed, by_hand, rtol=1e-5, atol=1e-6)


# CRD memory update ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [0.0, 0.25, 0.5, 0.9])
def test_momentum_update_hand_values(m):
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    values = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    momentum_update(bank, torch.tensor([0, 2]), values, m)
    row0 = np.array([m, 1 - m]) / math.sqrt(m * m + (1 - m) ** 2)
    mix2 = np.array([0.6 * m + (1 - m), 0.8 * m])
    row2 = mix2 / np.linalg.norm(mix2)
    np.testing.assert_allclose(bank[0].numpy(), row0, rtol=1e-6)
    np.testing.assert_allclose(bank[1].numpy(), [0.0, 1.0])  # untouched row
    np.testing.assert_allclose(bank[2].numpy(), row2, rtol=1e-6)


def test_momentum_zero_replaces_and_high_momentum_keeps_the_old_row():
    bank = torch.tensor([[3.0, 4.0]])
    momentum_update(bank, torch.tensor([0]), torch.tensor([[0.0, 2.0]]), 0.0)
    np.testing.assert_allclose(bank[0].numpy(), [0.0, 1.0], atol=1e-7)
    bank = torch.tensor([[1.0, 0.0]])
    momentum_update(bank, torch.tensor([0]), torch.tensor([[0.0, 1.0]]), 0.9)
    assert bank[0, 0] > 0.99  # mostly the old row: 0.9 / sqrt(0.82) = 0.9939
    np.testing.assert_allclose(bank[0].numpy(), [0.9 / math.sqrt(0.82), 0.1 / math.sqrt(0.82)], rtol=1e-6)


@pytest.mark.parametrize("m", [0.0, 0.9])
def test_crd_after_step_moves_both_banks_by_nce_m(m):
    s_shapes = probe_like(pooled=(2, 6))
    t_shapes = probe_like(pooled=(2, 5))
    ctx = dataclasses.replace(setup_context(s_shapes, t_shapes), train_targets=torch.arange(12) % 3)
    cls = METHODS.get("crd")
    torch.manual_seed(0)
    crd = cls(cls.Params(feat_dim=4, nce_k=5, nce_m=m), ctx)
    from kdzoo.models.features import Features

    s_pooled, t_pooled = torch.randn(3, 6), torch.randn(3, 5)
    index = torch.tensor([1, 4, 8])
    old_s, old_t = crd.memory_s.clone(), crd.memory_t.clone()
    crd.losses(Batch(inputs=torch.zeros(3), targets=index % 3, index=index), Features(pooled=s_pooled),
               Features(pooled=t_pooled), step_info())
    assert torch.equal(crd.memory_s, old_s)  # nothing moves before the optimizer step
    crd.after_step()
    with torch.no_grad():
        e_s, e_t = crd.embed(s_pooled, t_pooled)
    for bank, old, e in ((crd.memory_s, old_s, e_s), (crd.memory_t, old_t, e_t)):
        for row, i in enumerate(index.tolist()):
            mixed = m * _np(old[i]) + (1 - m) * _np(e[row])
            np.testing.assert_allclose(_np(bank[i]), mixed / np.linalg.norm(mixed), rtol=1e-5, atol=1e-6)
        others = [i for i in range(12) if i not in index.tolist()]
        assert torch.equal(bank[others], old[others])


def probe_like(pooled):
    from kdzoo.models.features import Features

    return Features(logits=torch.Size((2, 3)), pooled=torch.Size(pooled))
