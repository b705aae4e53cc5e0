"""weighted_total against hand sums, evaluate() leaving every buffer alone, and the lr schedules as tables."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdzoo.config.schema import OptimConfig, ScheduleConfig
from kdzoo.engine.step import train_step, weighted_total
from kdzoo.errors import KdzooError
from kdzoo.program.controllers import Controller
from kdzoo.program.evaluators import evaluate
from kdzoo.program.optim import build_optimizer, lr_factor
from tests.method_harness import build_regime, random_batch, step_info

CPU = torch.device("cpu")


# weighted_total -------------------------------------------------------------------------------------------------
def test_weighted_total_hand_sum():
    terms = {"ce": torch.tensor(2.0), "kd": torch.tensor(3.0), "at": torch.tensor(0.5)}
    total = weighted_total(terms, {"ce": 0.1, "kd": 0.9, "at": 1000.0})
    assert total.item() == pytest.approx(0.1 * 2 + 0.9 * 3 + 1000 * 0.5)  # 503.9


def test_weighted_total_each_weight_counts():
    terms = {"a": torch.tensor(1.0), "b": torch.tensor(10.0), "c": torch.tensor(100.0)}
    assert weighted_total(terms, {"a": 1.0, "b": 1.0, "c": 1.0}).item() == pytest.approx(111.0)
    assert weighted_total(terms, {"a": 2.0, "b": 1.0, "c": 1.0}).item() == pytest.approx(112.0)
    assert weighted_total(terms, {"a": 1.0, "b": 3.0, "c": 1.0}).item() == pytest.approx(131.0)
    assert weighted_total(terms, {"a": 1.0, "b": 1.0, "c": 0.5}).item() == pytest.approx(61.0)
    assert weighted_total(terms, {"c": 1.0}).item() == pytest.approx(100.0)  # terms without a weight are left out


def test_weighted_total_gradients_are_weighted():
    x = torch.tensor(1.5, requires_grad=True)
    y = torch.tensor(-2.0, requires_grad=True)
    weighted_total({"p": x * x, "q": 3 * y}, {"p": 0.25, "q": 4.0}).backward()
    assert x.grad.item() == pytest.approx(0.25 * 2 * 1.5)
    assert y.grad.item() == pytest.approx(4.0 * 3)


def test_weighted_total_skips_zero_weights_even_for_missing_or_nan_terms():
    terms = {"ce": torch.tensor(2.0), "kd": torch.tensor(float("nan"))}
    assert weighted_total(terms, {"ce": 1.0, "kd": 0.0}).item() == pytest.approx(2.0)
    assert weighted_total(terms, {"ce": 1.0, "absent": 0.0}).item() == pytest.approx(2.0)


def test_weighted_total_missing_term_raises():
    with pytest.raises(KdzooError, match="kd"):
        weighted_total({"ce": torch.tensor(1.0)}, {"ce": 1.0, "kd": 0.9})


def test_weighted_total_all_zero_raises():
    with pytest.raises(KdzooError):
        weighted_total({"ce": torch.tensor(1.0)}, {"ce": 0.0})


def test_weighted_total_negative_weight_subtracts():
    assert weighted_total({"a": torch.tensor(2.0), "b": torch.tensor(1.0)}, {"a": 1.0, "b": -0.5}).item() == \
        pytest.approx(1.5)


@pytest.fixture(scope="module")
def kd_regime(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bite_engine")
    return build_regime(folder, "resnet8", "resnet14", {"ce": 0.1, "kd": 0.9}, batch_size=8, n_train=40)


def test_logged_terms_times_weights_equal_the_total(kd_regime):
    """train_step's total equals sum(weight * term) of the terms it returns, for the published KD recipe."""
    phase = kd_regime.phases()[-1]
    assert phase.weights == {"ce": 0.1, "kd": 0.9}
    kd_regime.train(True)
    optimizer = torch.optim.SGD(phase.params, lr=0.0)  # lr 0: the step changes nothing
    from kdzoo.engine.device import Precision

    total, terms = train_step(phase, random_batch(kd_regime), step_info(), optimizer, Precision("fp32", CPU))
    expected = 0.1 * terms["ce"].item() + 0.9 * terms["kd"].item()
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert terms["kd"].item() != pytest.approx(terms["ce"].item())  # the two weights are distinguishable


# evaluate --------------------------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.bn1d = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.fc(self.bn1d(x))


def _loader(n_batches=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 3, 8, 8, generator=g) * 3 + 1, torch.randint(0, 5, (6,), generator=g))
            for _ in range(n_batches)]


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_leaves_every_buffer_and_parameter_unchanged(training):
    torch.manual_seed(0)
    net = _Net()
    net.train()
    net(torch.randn(4, 3, 8, 8))  # running stats away from their init
    net.train(training)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert any("num_batches_tracked" in k for k in before)
    evaluate(net, _loader(), CPU)
    after = net.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"evaluate changed {changed}"
    assert net.training is training
    assert all(m.training is training for m in net.modules())


def test_evaluate_restores_train_mode_and_uses_eval_statistics():
    torch.manual_seed(0)
    net = _Net()
    net.train()
    net(torch.randn(4, 3, 8, 8))
    loader = _loader(1)
    images, targets = loader[0]
    with torch.no_grad():
        net.eval()
        logits = net(images)
        net.train()
    expected_loss = nn.functional.cross_entropy(logits, targets).item()
    expected_top1 = 100.0 * (logits.argmax(1) == targets).float().mean().item()
    out = evaluate(net, loader, CPU)
    assert net.training
    assert out["n"] == 6
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert out["top1"] == pytest.approx(expected_top1)
    assert out["top5"] == pytest.approx(100.0)  # 5 classes: the top 5 always hit


# lr schedules ---------------------------------------------------------------------------------------------------
MULTISTEP = ScheduleConfig()  # the classic recipe: x0.1 at 150/180/210


def test_schedule_defaults_are_the_classic_recipe():
    assert MULTISTEP.name == "multistep"
    assert list(MULTISTEP.milestones) == [150, 180, 210]
    assert MULTISTEP.gamma == 0.1
    assert MULTISTEP.warmup_epochs == 0
    opt = OptimConfig()
    assert (opt.name, opt.lr, opt.momentum, opt.weight_decay) == ("sgd", 0.05, 0.9, 5e-4)


@pytest.mark.parametrize("epoch,factor", [
    (0, 1.0), (1, 1.0), (149, 1.0), (149.99, 1.0),
    (150, 0.1), (150.5, 0.1), (179, 0.1), (179.999, 0.1),
    (180, 0.01), (209, 0.01), (210, 0.001), (239.9, 0.001),
])
def test_multistep_steps_exactly_at_the_milestones(epoch, factor):
    assert lr_factor(MULTISTEP, epoch, 240, 0.05) == pytest.approx(factor, rel=1e-9)


def test_multistep_unsorted_milestones_and_gamma():
    cfg = ScheduleConfig(milestones=[30, 10, 20], gamma=0.5)
    assert [lr_factor(cfg, e, 40, 0.1) for e in (9, 10, 19, 20, 29, 30, 39)] == \
        pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125])


@pytest.mark.parametrize("progress,factor", [(0.0, 0.0), (0.5, 0.1), (2.5, 0.5), (4.0, 0.8), (4.9, 0.98)])
def test_warmup_is_linear(progress, factor):
    cfg = ScheduleConfig(warmup_epochs=5)
    assert lr_factor(cfg, progress, 240, 0.05) == pytest.approx(factor, abs=1e-7)


def test_warmup_then_multistep():
    cfg = ScheduleConfig(warmup_epochs=5, milestones=[10])
    assert lr_factor(cfg, 5.0, 20, 0.1) == pytest.approx(1.0)
    assert lr_factor(cfg, 9.9, 20, 0.1) == pytest.approx(1.0)
    assert lr_factor(cfg, 10.0, 20, 0.1) == pytest.approx(0.1)


def test_cosine_endpoints_midpoint_and_min_lr():
    cfg = ScheduleConfig(name="cosine")
    assert lr_factor(cfg, 0, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(cfg, 50, 100, 0.1) == pytest.approx(0.5)
    assert lr_factor(cfg, 25, 100, 0.1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(cfg, 100, 100, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(cfg, 150, 100, 0.1) == pytest.approx(0.0, abs=1e-12)  # clamped past the end
    floor = ScheduleConfig(name="cosine", min_lr=0.001)
    assert lr_factor(floor, 0, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(floor, 100, 100, 0.1) == pytest.approx(0.01)  # min_lr / base_lr
    assert lr_factor(floor, 50, 100, 0.1) == pytest.approx(0.01 + 0.99 * 0.5)


def test_cosine_with_warmup_starts_after_the_warmup():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=10)
    assert lr_factor(cfg, 5, 110, 0.1) == pytest.approx(0.5, abs=1e-7)
    assert lr_factor(cfg, 10, 110, 0.1) == pytest.approx(1.0)
    assert lr_factor(cfg, 60, 110, 0.1) == pytest.approx(0.5)
    assert lr_factor(cfg, 110, 110, 0.1) == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule():
    cfg = ScheduleConfig(name="constant")
    assert [lr_factor(cfg, e, 10, 0.1) for e in (0, 3.3, 9.9)] == [1.0, 1.0, 1.0]


def _lrs(cfg, epochs, steps_per_epoch, lr=0.05):
    param = nn.Parameter(torch.zeros(1))
    opt = build_optimizer([param], OptimConfig(lr=lr))
    controller = Controller(opt, cfg, epochs, steps_per_epoch)  # what every phase steps its lr with
    out = []
    for _ in range(epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        controller.after_step()
    return out


def test_scheduler_steps_per_optimizer_step_multistep():
    lrs = _lrs(ScheduleConfig(milestones=[2, 3]), epochs=4, steps_per_epoch=3)
    assert lrs == pytest.approx([0.05] * 6 + [0.005] * 3 + [0.0005] * 3)


def test_scheduler_warmup_per_step():
    lrs = _lrs(ScheduleConfig(warmup_epochs=1, milestones=[]), epochs=2, steps_per_epoch=4, lr=0.1)
    assert lrs == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1], abs=1e-8)


def test_scheduler_cosine_per_step():
    lrs = _lrs(ScheduleConfig(name="cosine"), epochs=2, steps_per_epoch=2, lr=0.1)
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx(expected)


def test_build_optimizer_sgd_settings():
    param = nn.Parameter(torch.zeros(1))
    frozen = nn.Parameter(torch.zeros(1), requires_grad=False)
    opt = build_optimizer([param, frozen], OptimConfig(lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True))
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.05, 0.9, 5e-4, True)
    assert len(group["params"]) == 1  # frozen parameters are left out
