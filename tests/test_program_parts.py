"""The program's pieces on hand-made cases: the step context's memo, bindings and namespaces, the original-rows
mask of ce, EMA slots, per-head evaluation, program checks, extra artifacts in the checkpoint store."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from kdzoo.checkpoints.store import CheckpointStore
from kdzoo.core.batch import Batch, Binding, StepInfo
from kdzoo.core.dist import DistInfo
from kdzoo.data.info import DatasetInfo
from kdzoo.distillers import METHODS, SetupContext
from kdzoo.distillers.context import StepContext
from kdzoo.errors import ConfigError
from kdzoo.models.features import Features
from kdzoo.program import Artifact, DataStream, ModelSlot, Phase, Program
from kdzoo.program.evaluators import HeadsEvaluator
from kdzoo.program.methods import build_methods, method_instances

INFO = StepInfo(epoch=0, epochs=1, step=0, steps_per_epoch=1)


class Counting:
    """A feature source that counts its forwards."""

    def __init__(self, scale: float = 1.0):
        self.calls, self.scale = 0, scale

    def __call__(self, x):
        self.calls += 1
        return Features(logits=x * self.scale)


def test_features_are_memoised_per_network_and_view():
    batch = Batch(inputs=torch.ones(2, 3), targets=torch.zeros(2, dtype=torch.long),
                  views={"x": torch.ones(2, 3), "v2": torch.full((2, 3), 2.0)})
    student, teacher = Counting(), Counting(3.0)
    ctx = StepContext(batch, INFO, {"student": student, "teacher": teacher})
    a, b = ctx.features("student"), ctx.features("student", "x")
    assert a is b and student.calls == 1
    assert torch.equal(ctx.features("student", "v2").logits, batch.views["v2"]) and student.calls == 2
    assert not ctx.no_grad_features("student").logits.requires_grad
    assert student.calls == 2  # a forward the step made already is reused, detached
    ctx.add_view("pool", torch.zeros(4, 3))
    ctx.no_grad_features("student", "pool")
    ctx.no_grad_features("student", "pool")
    assert student.calls == 3  # a scoring pass of its own: once, without a graph
    detached = ctx.teacher_features(Binding(teacher="teacher", detach_teacher=True))
    assert torch.equal(detached.logits, torch.full((2, 3), 3.0)) and teacher.calls == 1
    with pytest.raises(KeyError, match="no view 'rot'"):
        ctx.features("student", "rot")
    with pytest.raises(KeyError, match="no network named 'peer9'"):
        ctx.features("peer9")


def test_two_methods_on_the_same_pair_cost_one_student_forward():
    shapes = Features(logits=torch.Size([2, 3]))  # what the three methods read
    setup = SetupContext(student=nn.Identity(), teacher=nn.Identity(), student_shapes=shapes,
                         teacher_shapes=shapes, train_targets=torch.zeros(3, dtype=torch.long),
                         batch_size=2)
    methods = build_methods({"ce": 1.0, "kd": 1.0, "dist": 1.0}, {}, lambda b: setup, ("student", "teacher"))
    logits = torch.randn(4, 3, requires_grad=True)
    student, teacher = Counting(), Counting(0.5)
    batch = Batch(inputs=logits, targets=torch.tensor([0, 1, 2, 0]))
    ctx = StepContext(batch, INFO, {"student": student, "teacher": teacher})
    terms = {}
    for m in methods.values():
        terms.update(m.step_losses(ctx))
    assert set(terms) == {"ce", "kd", "dist"} and student.calls == 1 and teacher.calls == 1


def test_ce_honours_the_original_rows():
    ce = METHODS.get("ce")(METHODS.get("ce").Params(), None)
    logits = torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    targets = torch.tensor([0, 0, 1])
    mask = torch.tensor([True, False, True])
    got = ce.losses(Batch(inputs=logits, targets=targets, original=torch.tensor([0, 2])), Features(logits=logits), None, INFO)
    assert got["ce"].item() == pytest.approx(F.cross_entropy(logits[mask], targets[mask]).item())
    full = ce.losses(Batch(inputs=logits, targets=targets), Features(logits=logits), None, INFO)["ce"]
    assert full.item() != pytest.approx(got["ce"].item())


def test_namespaces_bindings_and_their_errors():
    instances = method_instances({"peer0.ce": 1.0, "peer0.kd": 0.5, "peer1.kd": 0.0, "kd": 1.0})
    assert list(instances) == ["peer0.ce", "peer0.kd", "kd"]  # weight 0 builds nothing
    setup = lambda b: None  # noqa: E731
    with pytest.raises(ConfigError, match="methods.peer0.kd.teacher: no network named 'teacher'"):
        build_methods({"peer0.kd": 1.0}, {}, setup, ("peer0", "peer1"))
    with pytest.raises(ConfigError, match="methods.peer0.kd.detach_teacher: expected a bool"):
        build_methods({"peer0.kd": 1.0}, {"peer0.kd": {"teacher": "peer1", "detach_teacher": "yes"}}, setup,
                      ("peer0", "peer1"))
    with pytest.raises(ConfigError, match="methods.peer2.kd: no loss term of method kd in namespace peer2"):
        build_methods({"peer0.kd": 1.0}, {"peer2.kd": {"T": 2}}, setup, ("peer0", "peer1"))
    with pytest.raises(ConfigError, match="unknown loss term"):
        method_instances({"peer0.nope": 1.0})


def _tiny_program(slots: dict[str, ModelSlot], artifacts=None) -> Program:
    data = {"train": DataStream(torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.zeros(4)), 2, train=True)}
    trainable = nn.ModuleDict({k: s.module for k, s in slots.items() if s.role == "train"})
    phase = Phase(name="main", epochs=1, params=list(trainable.parameters()), step=lambda b, i: {}, weights={})
    arts = artifacts if artifacts is not None else {"net": Artifact(lambda: trainable, dict)}
    return Program(models=slots, data=data, phases=[phase], artifacts=arts, trainable=trainable,
                   info=DatasetInfo("t", 2, (2,), (0.0,), (1.0,)))


def test_an_ema_slot_follows_its_source_after_each_optimizer_step_and_resumes():
    source = nn.Linear(2, 2)
    target = nn.Linear(2, 2)
    start = target.weight.detach().clone()
    program = _tiny_program({"online": ModelSlot(source), "target": ModelSlot(target, role="ema", ema_of="online",
                                                                                 ema_decay=0.75)})
    program.after_optimizer_step()
    expected = 0.75 * start + 0.25 * source.weight.detach()
    assert torch.allclose(target.weight, expected)
    state = program.snapshot()
    assert torch.equal(state["ema"]["target"]["weight"], target.weight)
    with torch.no_grad():
        target.weight.zero_()
    program.load_state_dict(state)
    assert torch.allclose(target.weight, expected)
    program.train(True)
    assert source.training and not target.training  # an EMA slot stays in eval mode


def test_program_checks_its_parts():
    with pytest.raises(ConfigError, match="ema_of 'nobody'"):
        _tiny_program({"target": ModelSlot(nn.Linear(2, 2), role="ema", ema_of="nobody")})
    with pytest.raises(ConfigError, match="role ema and ema_of go together"):
        ModelSlot(nn.Linear(2, 2), role="ema")
    with pytest.raises(ConfigError, match="role 'boss'"):
        ModelSlot(nn.Linear(2, 2), role="boss")
    with pytest.raises(ConfigError, match="at least one artifact"):
        _tiny_program({"net": ModelSlot(nn.Linear(2, 2))}, artifacts={})


class TwoHeads(nn.Module):
    def forward(self, x):
        return {"main": x, "flipped": -x}


class Runtime:
    device, dist, channels_last = torch.device("cpu"), DistInfo(), False

    def __init__(self, loader):
        self._loader = loader

    def loader(self, stream):
        return self._loader


def test_heads_evaluator_reports_each_heads_accuracy():
    logits = torch.tensor([[3.0, 0.0, 1.0], [0.0, 2.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 1.0]])
    targets = torch.tensor([0, 1, 1, 2])  # main: 3 of 4 right; flipped (argmax of -x): 1 of 4
    loader = [(logits[:2], targets[:2]), (logits[2:], targets[2:])]
    metrics = HeadsEvaluator(lambda: TwoHeads(), heads=lambda out: out, stream="val")(Runtime(loader))
    assert metrics["val_main_top1"] == pytest.approx(75.0) and metrics["val_flipped_top1"] == pytest.approx(25.0)
    assert metrics["val_main_loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)


def test_store_publishes_and_keeps_extra_artifacts(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints")
    weights = {"w": torch.zeros(2)}
    for epoch, improved in ((1, True), (2, False)):
        store.save({"w": torch.full((2,), float(epoch))}, {"epoch": epoch}, {"progress": {}}, improved,
                   extra={"peer1": ({"w": torch.full((2,), 10.0 + epoch)}, {"epoch": epoch})})
    folder = tmp_path / "checkpoints"
    assert load_file(str(folder / "peer1.last.safetensors"))["w"][0] == 12.0
    assert load_file(str(folder / "peer1.best.safetensors"))["w"][0] == 11.0
    assert load_file(str(folder / "best.safetensors"))["w"][0] == 1.0 and weights
    generations = sorted(p.name for p in folder.glob("c[0-9]*.safetensors"))
    assert generations == ["c000001.best.safetensors", "c000001.peer1.best.safetensors",
                           "c000002.last.safetensors", "c000002.peer1.last.safetensors"]
    store.repair()
    assert (folder / "peer1.last.safetensors").is_file() and store.weights_path("peer1.best").is_file()
