"""KD loss against a hand computation; the frozen teacher; gradient routing through a distillation step."""
from __future__ import annotations

import math

import pytest
import torch

from kdzoo.distillers.kd import kd_loss
from kdzoo.models import Needs, create_model
from kdzoo.models.frozen import FrozenTeacher


def _softmax(row, T):
    exps = [math.exp(v / T) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_loss_matches_hand_computation(T):
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 1.0, 0.0], [0.5, 0.5, 4.0]]
    expected = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s, p_t = _softmax(s_row, T), _softmax(t_row, T)
        expected += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    expected = expected / len(student) * T * T  # batch mean, T^2 scaling
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), T)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_for_equal_logits():
    z = torch.randn(4, 10)
    assert kd_loss(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_frozen_teacher_stays_frozen():
    model = create_model("resnet8", num_classes=10, in_channels=1)
    teacher = FrozenTeacher(model, Needs(logits=True, pooled=True))
    teacher.train()
    assert not teacher.training and not model.training
    assert all(not p.requires_grad for p in model.parameters())
    running_mean = model.bn1.running_mean.clone()
    feats = teacher(torch.randn(4, 1, 8, 8))
    assert torch.equal(model.bn1.running_mean, running_mean)  # eval mode: BN statistics untouched
    assert not feats.logits.requires_grad and feats.logits.grad_fn is None
    # ordinary tensors: usable in losses that save them for backward
    student_logits = torch.randn(4, 10, requires_grad=True)
    torch.nn.functional.mse_loss(student_logits, feats.logits).backward()
    assert student_logits.grad is not None
