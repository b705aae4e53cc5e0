"""`kdzoo.Distiller`, the offline program in the user's own loop: for every method, its terms on a batch equal the
engine's on the same batch and weights, or it is refused in one line saying what it needs; gradients reach the
student and the adapters, never the teacher; the hooks (epochs, banks) act."""
from __future__ import annotations

import copy

import pytest
import torch

from kdzoo.api.distiller import Distiller
from kdzoo.config import load_config
from kdzoo.core.batch import StepInfo
from kdzoo.core.dist import DistInfo
from kdzoo.distillers import METHODS
from kdzoo.errors import ConfigError
from kdzoo.models import create_model
from kdzoo.program import BuildContext
from kdzoo.regimes import REGIMES
from tests.method_harness import EpochRuntime
from tests.test_regime_methods import RECIPES, checkpoints, recipe  # noqa: F401 (fixture)

PLAIN_LOOP_REFUSES = ("grouped batches", "init stage", "rotate4 batches", "every training image at each epoch")


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_distiller_terms_equal_the_engines_on_the_same_batch_and_weights(method, checkpoints):  # noqa: F811
    cfg = load_config(RECIPES["offline"], recipe("offline", method, checkpoints))
    torch.manual_seed(0)
    try:
        program = REGIMES.get("offline").build(BuildContext(cfg=cfg, device=torch.device("cpu"), dist=DistInfo(),
                                                            log=lambda _: None))
    except ConfigError as err:  # the recipe lacks what it needs (byol's second view): nothing to compare with
        assert "\n" not in str(err)
        return
    stream = program.data["train"]
    batch = stream.batch(next(iter(stream.loader(DistInfo()))))
    student, teacher = (copy.deepcopy(program.models[name].module) if name in program.models else None
                        for name in ("student", "teacher"))
    try:
        distiller = Distiller(student, teacher, loss=dict(cfg.loss), methods=copy.deepcopy(cfg.methods),
                              example=batch.inputs[:2], train_targets=stream.dataset.targets,
                              batch_size=cfg.dataset.batch_size)
    except ConfigError as err:
        assert "\n" not in str(err) and any(why in str(err) for why in PLAIN_LOOP_REFUSES), str(err)
        assert "kdzoo.run" in str(err)
        return
    distiller.bundle.load_state_dict(program.trainable.state_dict())
    main = program.phases[-1]
    program.train(True)
    distiller.train(True)
    if main.on_epoch_start is not None:
        main.on_epoch_start(0, EpochRuntime(program))
    distiller.start_epoch(0)
    torch.manual_seed(1)
    expected = main.step(batch, StepInfo(epoch=0, epochs=cfg.epochs, step=0, steps_per_epoch=1))
    torch.manual_seed(1)
    views = {name: v for name, v in batch.views.items() if name != "x"}
    out = distiller(batch.inputs, batch.targets, index=batch.index, views=views or None)
    assert out.terms.keys() == expected.keys()
    for term, value in expected.items():
        torch.testing.assert_close(out.terms[term], value, rtol=1e-5, atol=1e-6, msg=f"{method}: {term}")
    assert out.weights == main.weights
    assert out.student_logits is not None and out.student_logits.shape == (batch.size, 10)


def _pair():
    torch.manual_seed(0)
    return (create_model("resnet8", num_classes=10, in_channels=1),
            create_model("resnet14", num_classes=10, in_channels=1))


def test_gradients_reach_the_student_and_adapters_of_each_term_never_the_teacher():
    student, teacher = _pair()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    distiller = Distiller(student, teacher, loss={"ce": 1.0, "kd": 1.0, "fitnet": 1.0}, example=x[:2])
    out = distiller(x, y)
    assert not any(p.requires_grad for p in distiller.teacher.parameters())
    regressor = list(distiller.methods["fitnet"].parameters())
    assert regressor and all(any(p is q for q in distiller.trainable_parameters()) for p in regressor)
    kd_grads = torch.autograd.grad(out.terms["kd"], regressor, allow_unused=True)
    assert all(g is None for g in kd_grads)  # kd does not reach FitNet's regressor
    fit_grads = torch.autograd.grad(out.terms["fitnet"], regressor, retain_graph=True)
    assert all(g is not None and g.abs().sum() > 0 for g in fit_grads)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_the_loss_is_the_weighted_sum_and_logits_are_the_students():
    student, teacher = _pair()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    distiller = Distiller(student, teacher, loss={"ce": 0.1, "kd": 0.9}, example=x[:2]).train(False)
    out = distiller(x, y)
    torch.testing.assert_close(out.loss, 0.1 * out.terms["ce"] + 0.9 * out.terms["kd"])
    torch.testing.assert_close(out.student_logits, student.eval()(x))
    torch.testing.assert_close(out.terms["ce"], torch.nn.functional.cross_entropy(student(x), y))


def test_dkd_warms_up_with_start_epoch():
    student, teacher = _pair()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    distiller = Distiller(student, teacher, loss={"dkd": 1.0}, methods={"dkd": {"warmup": 4}}, example=x[:2])
    distiller.start_epoch(0)
    first = distiller(x, y).terms["dkd"]
    distiller.start_epoch(3)
    fourth = distiller(x, y).terms["dkd"]
    torch.testing.assert_close(fourth, first * 4, rtol=1e-4, atol=1e-6)  # DKD's min(epoch / warmup, 1) ramp


def test_crd_needs_indices_and_its_bank_takes_the_rows_after_the_step():
    student, teacher = _pair()
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6) % 3
    with pytest.raises(ConfigError, match="give train_targets"):
        Distiller(student, teacher, loss={"crd": 1.0}, example=x[:2])
    targets = torch.arange(40) % 10
    distiller = Distiller(student, teacher, loss={"crd": 1.0}, methods={"crd": {"nce_k": 8}}, example=x[:2],
                          train_targets=targets)
    crd = distiller.methods["crd"]
    before = crd.memory_s.clone()
    index = torch.tensor([0, 1, 2, 3, 4, 5])
    distiller(x, y, index=index).loss.backward()
    assert torch.equal(crd.memory_s, before)  # the backward still reads the bank as it was
    distiller.after_step()
    changed = (crd.memory_s != before).any(dim=1)
    assert changed[:6].all() and not changed[6:].any()


def test_a_method_without_its_teacher_or_view_is_one_line():
    student, _ = _pair()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ConfigError, match="kd distils from a teacher"):
        Distiller(student, loss={"ce": 1.0, "kd": 1.0}, example=x)
    distiller = Distiller(student, loss={"ce": 1.0}, example=x)  # no teacher: plain training works
    assert distiller(x, torch.tensor([1, 2])).loss > 0
    with pytest.raises(ConfigError, match="example"):
        Distiller(student, loss={"ce": 1.0}, example=x[:1])


def test_it_runs_under_autocast_and_compile():
    student, teacher = _pair()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    distiller = Distiller(student, teacher, loss={"ce": 1.0, "kd": 1.0}, example=x[:2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = distiller(x, y)
    assert out.student_logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    compiled = torch.compile(distiller, backend="eager")
    torch.testing.assert_close(compiled(x, y).loss, distiller(x, y).loss)


def _ddp_worker(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    student, teacher = _pair()
    distiller = Distiller(student, teacher, loss={"ce": 1.0, "kd": 1.0, "fitnet": 10.0},
                          example=torch.zeros(2, 1, 8, 8)).train(False)  # eval: BN statistics stay out of it
    ddp = DistributedDataParallel(distiller)
    x, y = torch.load(f"{out}/batch.pt", weights_only=True)
    half = slice(rank * 4, rank * 4 + 4)
    ddp(x[half], y[half]).loss.backward()
    torch.save([p.grad for p in distiller.trainable_parameters()], f"{out}/grads{rank}.pt")
    dist.destroy_process_group()


def test_under_ddp_each_rank_gets_the_gradient_of_the_whole_batch(tmp_path):
    """Wrapped in DDP, the distiller's gradients are averaged over the ranks: each rank holds the mean of the
    gradients a single process computes on each half of the batch."""
    import torch.multiprocessing as mp

    torch.manual_seed(5)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    torch.save((x, y), tmp_path / "batch.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"grads{r}.pt", weights_only=True) for r in (0, 1)]
    student, teacher = _pair()
    alone = Distiller(student, teacher, loss={"ce": 1.0, "kd": 1.0, "fitnet": 10.0},
                      example=torch.zeros(2, 1, 8, 8)).train(False)
    halves = []
    for part in (slice(0, 4), slice(4, 8)):
        alone.zero_grad()
        alone(x[part], y[part]).loss.backward()
        halves.append([p.grad.clone() for p in alone.trainable_parameters()])
    for g0, g1, a, b in zip(*ranks, *halves):
        torch.testing.assert_close(g0, g1)
        torch.testing.assert_close(g0, (a + b) / 2, rtol=1e-4, atol=1e-6)
