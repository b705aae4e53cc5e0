"""CKD's groups, losses and variants, the mixup baselines, against hand computations."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kdzoo.core.batch import StepInfo
from kdzoo.data.groups import (
    GroupDataset,
    GroupLayout,
    GroupSampler,
    draw_groups,
    group_batch,
    possible_groups,
)
from kdzoo.distillers import METHODS
from kdzoo.distillers.ckd import group_sizes
from kdzoo.distillers.context import StepContext
from kdzoo.distillers.kd import kd_loss
from kdzoo.models.features import Features

INFO = StepInfo(epoch=0, epochs=1, step=0, steps_per_epoch=1)


@pytest.mark.parametrize("pos_and_neg, expected", [(2, (1, 1)), (3, (2, 1)), (4, (2, 2)), (5, (3, 2))])
def test_pos_and_neg_splits_like_ckd(pos_and_neg, expected):
    assert group_sizes(pos_and_neg) == expected


def test_groups_are_distinct_disjoint_sorted_within_parts_and_seeded():
    layout = GroupLayout((("pos", 2), ("neg", 1)), count=500)
    groups = draw_groups(60, layout, seed=1)
    assert groups.shape == (500, 3)
    rows = {tuple(g) for g in groups.tolist()}
    assert len(rows) == 500
    assert all(len(set(g)) == 3 and g[0] < g[1] for g in rows)  # disjoint; positives as a set
    assert torch.equal(groups, draw_groups(60, layout, seed=1))
    assert not torch.equal(groups, draw_groups(60, layout, seed=2))


def test_every_group_is_drawn_when_fewer_than_five_times_the_count_exist():
    layout = GroupLayout((("pos", 2), ("neg", 1)), count=100)
    assert possible_groups(5, (2, 1)) == 30  # C(5, 2) * C(3, 1)
    groups = draw_groups(5, layout, seed=0)
    assert len({tuple(g) for g in groups.tolist()}) == 30 == len(groups)
    pairs = draw_groups(4, GroupLayout((("m0", 1), ("m1", 1)), count=10), seed=0)  # 12 ordered pairs exist
    assert len({tuple(g) for g in pairs.tolist()}) == 10 and all(a != b for a, b in pairs.tolist())


class Images(torch.utils.data.Dataset):
    def __init__(self, n):
        self.targets = torch.arange(n) % 3
        self.info = None

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), int(self.targets[i])


def test_group_batches_split_parts_in_group_order_and_carry_indices_and_labels():
    layout = GroupLayout((("pos", 2), ("neg", 1)))
    data = GroupDataset(Images(10), torch.tensor([[0, 1, 2], [3, 4, 5]]))
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    batch = group_batch(next(iter(loader)), layout, torch.device("cpu"))
    assert batch.views["pos"][:, 0, 0, 0].tolist() == [0, 1, 3, 4]
    assert batch.views["neg"][:, 0, 0, 0].tolist() == [2, 5]
    assert batch.index_of("neg").tolist() == [2, 5] and batch.targets_of("pos").tolist() == [0, 1, 0, 1]


def test_the_mixed_view_is_the_weighted_sum_with_dirichlet_weights():
    layout = GroupLayout((("m0", 1), ("m1", 1), ("m2", 1)), mix="mix")
    data = GroupDataset(Images(10), torch.tensor([[1, 2, 3], [4, 5, 6]]))
    raw = next(iter(torch.utils.data.DataLoader(data, batch_size=2)))
    torch.manual_seed(0)
    batch = group_batch(raw, layout, torch.device("cpu"))
    w = batch.mix_lambda
    torch.manual_seed(0)
    assert torch.allclose(w, torch.distributions.Dirichlet(torch.ones(3)).sample())
    assert w.shape == (3,) and float(w.sum()) == pytest.approx(1.0) and bool((w > 0).all())
    a, b, c = w.tolist()
    assert batch.views["mix"][:, 0, 0, 0].tolist() == pytest.approx([a + 2 * b + 3 * c, 4 * a + 5 * b + 6 * c])
    draws = torch.stack([torch.distributions.Dirichlet(torch.ones(2)).sample()[0] for _ in range(4000)])
    assert abs(float(draws.mean()) - 0.5) < 0.02 and abs(float(draws.var()) - 1 / 12) < 0.01  # Beta(1, 1)


def test_group_epochs_walk_one_permutation_after_another_and_ranks_split_them():
    sampler = GroupSampler(num_groups=10, images=8, batch_size=2, seed=0)
    assert len(sampler) == 8  # ceil(8 / 2) = 4 steps of 2 groups
    seen = []
    for epoch in range(5):  # 40 groups = 4 passes over the 10
        sampler.set_epoch(epoch)
        seen += list(sampler)
    for p in range(4):
        assert sorted(seen[10 * p:10 * p + 10]) == list(range(10))
    ranks = [GroupSampler(10, 8, 2, 0, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == 4  # ceil(8 / 4) = 2 steps per rank
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(seen[:8])


# --- losses ----------------------------------------------------------------------------------------------
def _method(name, **params):
    cls = METHODS.get(name)
    ctx = SimpleNamespace(student_shapes=None, teacher_shapes=None)
    return cls(cls.Params(**params), ctx)


def _ctx(views: dict, student: dict, teacher: dict, targets: dict, mix_lambda=None) -> StepContext:
    batch = SimpleNamespace(views=views, view_targets=targets, mix_lambda=mix_lambda,
                            inputs=next(iter(views.values())), targets_of=lambda v: targets[v],
                            view=lambda v: views[v])
    sources = {"student": lambda x: Features(logits=student[_name(views, x)]),
               "teacher": lambda x: Features(logits=teacher[_name(views, x)])}
    return StepContext(batch, INFO, sources)


def _name(views, x):
    return next(k for k, v in views.items() if v is x)


def _ckd_case():
    torch.manual_seed(0)
    views = {"pos": torch.randn(4, 1), "neg": torch.randn(2, 1)}  # B = 2 groups, P = 2, N = 1
    student = {"pos": torch.randn(4, 3, requires_grad=True), "neg": torch.randn(2, 3, requires_grad=True)}
    teacher = {"pos": torch.randn(4, 3), "neg": torch.randn(2, 3)}
    targets = {"pos": torch.tensor([0, 1, 2, 2]), "neg": torch.tensor([1, 0])}
    return views, student, teacher, targets


def _hand(student, teacher, targets, mix):
    """The CKD loss with Python loops: per group the mixed means of positives and negatives."""
    cls = rel = 0.0
    s_all, t_all = [], []
    for g in range(2):
        pos, neg = [2 * g, 2 * g + 1], [g]
        row_s, row_t = [], []
        for c in range(3):
            sp = sum(float(student["pos"][i, c].detach()) for i in pos) / 2
            sn = float(student["neg"][neg[0], c].detach())
            tp = sum(float(teacher["pos"][i, c]) for i in pos) / 2
            tn = float(teacher["neg"][neg[0], c])
            lp = sum(1.0 for i in pos if int(targets["pos"][i]) == c) / 2
            ln = 1.0 if int(targets["neg"][neg[0]]) == c else 0.0
            s, t, lab = mix(sp, sn), mix(tp, tn), mix(lp, ln)
            cls += (s - lab) ** 2
            rel += (s - t) ** 2
            row_s.append(s)
            row_t.append(t)
        s_all.append(row_s)
        t_all.append(row_t)
    return cls / 6, rel / 6, torch.tensor(s_all), torch.tensor(t_all)


@pytest.mark.parametrize("name, mix", [
    ("ckd", lambda x, y, lam: x - y),
    ("ckd_add", lambda x, y, lam: 0.5 * x + 0.5 * y),
    ("ckd_mixup", lambda x, y, lam: lam * x + (1 - lam) * y),
])
def test_ckd_and_its_variants_equal_the_hand_computation(name, mix):
    views, student, teacher, targets = _ckd_case()
    method = _method(name, pos_and_neg=3)
    torch.manual_seed(7)
    lam = float(torch.rand(()))
    torch.manual_seed(7)
    terms = method.step_losses(_ctx(views, student, teacher, targets))
    cls, rel, s, t = _hand(student, teacher, targets, lambda x, y: mix(x, y, lam))
    assert float(terms[f"{name}_cls"].detach()) == pytest.approx(cls, rel=1e-5)
    assert float(terms[f"{name}_rel"].detach()) == pytest.approx(rel, rel=1e-5)
    assert float(terms[f"{name}_kd"].detach()) == pytest.approx(float(kd_loss(s, t, 4.0)), rel=1e-5)
    for term in (f"{name}_cls", f"{name}_rel", f"{name}_kd"):  # each term trains both student forwards
        grads = torch.autograd.grad(terms[term], [student["pos"], student["neg"]], retain_graph=True)
        assert all(float(g.abs().sum()) > 0 for g in grads), term


def test_ckd_published_defaults():
    method = _method("ckd")
    assert method.params.pos_and_neg == 2 and method.params.groups == 100_000
    assert METHODS.get("ckd").recipes.loss == {"ckd_cls": 1.0, "ckd_rel": 1.0}  # w_cls = w_rel = 1, no CE, w_kd 0
    assert method.group_layout() == GroupLayout((("pos", 1), ("neg", 1)), count=100_000)
    assert METHODS.get("ckd_inter").WEIGHT == {"hint": 100.0, "vid": 1.0, "cc": 0.02}


def test_ckd_inter_adds_the_inner_method_on_the_feature_differences():
    from kdzoo.distillers.cc import CC

    torch.manual_seed(1)
    shapes = Features(pooled=torch.Size([2, 5]))
    method = METHODS.get("ckd_inter")(METHODS.get("ckd_inter").Params(inner="cc"),
                                      SimpleNamespace(student_shapes=shapes, teacher_shapes=shapes))
    assert isinstance(method.inner, CC)
    views = {"pos": torch.randn(2, 1), "neg": torch.randn(2, 1)}
    feats = {net: {v: Features(logits=torch.randn(2, 3, requires_grad=net == "student"),
                               pooled=torch.randn(2, 5, requires_grad=net == "student")) for v in views}
             for net in ("student", "teacher")}
    batch = SimpleNamespace(views=views, inputs=views["pos"], targets_of=lambda v: torch.tensor([0, 1]),
                            view=lambda v: views[v])
    sources = {net: (lambda n: lambda x: feats[n][_name(views, x)])(net) for net in feats}
    terms = method.step_losses(StepContext(batch, INFO, sources))
    diff = {net: Features(pooled=feats[net]["pos"].pooled - feats[net]["neg"].pooled) for net in feats}
    expected = method.inner.losses(batch, diff["student"], diff["teacher"], INFO)["cc"]  # same adapters
    assert float(terms["ckd_inter_feat"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(terms["ckd_inter_feat"].detach()) != 0
    grad = torch.autograd.grad(terms["ckd_inter_feat"], feats["student"]["pos"].pooled)[0]
    assert float(grad.abs().sum()) > 0


@pytest.mark.parametrize("name, k", [("mixup", 2), ("mixup3", 3)])
def test_mixup_terms_weight_each_member_by_its_mixing_weight(name, k):
    torch.manual_seed(3)
    parts = [f"m{i}" for i in range(k)]
    views = {p: torch.randn(4, 1) for p in parts}
    views["mix"] = torch.randn(4, 1)
    s = torch.randn(4, 5, requires_grad=True)
    teacher = {p: torch.randn(4, 5) for p in parts}
    targets = {p: torch.randint(0, 5, (4,)) for p in parts}
    w = torch.distributions.Dirichlet(torch.ones(k)).sample()
    ctx = _ctx(views, {"mix": s}, teacher, targets, mix_lambda=w)
    terms = _method(name).step_losses(ctx)
    cls = rel = kd = 0.0
    for i, p in enumerate(parts):
        log_p = F.log_softmax(s.detach(), 1)
        cls += float(w[i]) * float(-log_p[torch.arange(4), targets[p]].mean())
        rel += float(w[i]) * float(-(F.softmax(teacher[p], 1) * log_p).sum(1).mean())
        kd += float(w[i]) * float(kd_loss(s.detach(), teacher[p], 4.0))
    assert float(terms[f"{name}_cls"].detach()) == pytest.approx(cls, rel=1e-5)
    assert float(terms[f"{name}_rel"].detach()) == pytest.approx(rel, rel=1e-5)
    assert float(terms[f"{name}_kd"].detach()) == pytest.approx(kd, rel=1e-5)
    assert _method(name).group_layout().views == (*parts, "mix")
    for term in terms.values():
        assert float(torch.autograd.grad(term, s, retain_graph=True)[0].abs().sum()) > 0
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)


# --- parity with alextxu/ckd (helper/CKDTrainHelpers.py, MixupTrainHelpers.py) on identical inputs ------------
# Values computed by running the original helpers on CPU with these inputs (a Linear(4, 5) student seeded 0;
# pos/neg/labels/teacher logits from a generator seeded 1; CKD's lambda from np.random.seed(0)); code not copied.
ORIGINAL = {"ckd_11": [1.218382716178894, 2.7786359786987305, 0.8425245881080627],
            "ckd_21": [0.9985302686691284, 1.3162153959274292, 0.35849738121032715],
            "ckd_add_11": [0.18091100454330444, 0.6515747904777527, 0.2887548506259918],
            "ckd_add_21": [0.29855039715766907, 0.7492815256118774, 0.2576274871826172],
            "ckd_mixup_11": [0.19375865161418915, 0.6822273135185242, 0.291863352060318],
            "ckd_mixup_21": [0.3275609314441681, 0.7888918519020081, 0.2654249668121338],
            "mixup": [1.5417499542236328, 1.672684669494629, 0.5109941959381104]}
ORIGINAL_LAMBDA = 0.44912526447830964


def _original_inputs(p, n, b=3, c=5):
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(b, p, 4, generator=g), torch.randn(b, n, 4, generator=g)
    yp, yn = torch.randint(0, c, (b, p), generator=g), torch.randint(0, c, (b, n), generator=g)
    tp, tn = torch.randn(b, p, c, generator=g), torch.randn(b, n, c, generator=g)
    return pos, neg, yp, yn, tp, tn


def _linear_student():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 5)


@pytest.mark.parametrize("name", ["ckd", "ckd_add", "ckd_mixup"])
@pytest.mark.parametrize("p, n", [(1, 1), (2, 1)])
def test_ckd_terms_equal_the_original_helpers(name, p, n):
    pos, neg, yp, yn, tp, tn = _original_inputs(p, n)
    net = _linear_student()
    views = {"pos": pos.reshape(-1, 4), "neg": neg.reshape(-1, 4)}
    teacher = {"pos": tp.reshape(-1, 5), "neg": tn.reshape(-1, 5)}
    targets = {"pos": yp.reshape(-1), "neg": yn.reshape(-1)}
    batch = SimpleNamespace(views=views, inputs=views["pos"], targets_of=lambda v: targets[v], view=lambda v: views[v])
    sources = {"student": lambda x: Features(logits=net(x)),
               "teacher": lambda x: Features(logits=teacher[_name(views, x)])}
    method = _method(name, pos_and_neg=p + n)
    method.draw_lambda = lambda device: torch.tensor(ORIGINAL_LAMBDA)
    terms = method.step_losses(StepContext(batch, INFO, sources))
    got = [float(terms[f"{name}_{t}"].detach()) for t in ("cls", "rel", "kd")]
    assert got == pytest.approx(ORIGINAL[f"{name}_{p}{n}"], rel=1e-5)


def test_mixup_terms_equal_the_original_helpers():
    pos, neg, yp, yn, tp, tn = _original_inputs(1, 1)
    net, lam = _linear_student(), ORIGINAL_LAMBDA
    views = {"m0": pos[:, 0], "m1": neg[:, 0], "mix": lam * pos[:, 0] + (1 - lam) * neg[:, 0]}
    teacher = {"m0": tp[:, 0], "m1": tn[:, 0]}
    targets = {"m0": yp[:, 0], "m1": yn[:, 0]}
    batch = SimpleNamespace(views=views, inputs=views["m0"], targets_of=lambda v: targets[v], view=lambda v: views[v],
                            mix_lambda=torch.tensor([lam, 1 - lam]))
    sources = {"student": lambda x: Features(logits=net(x)),
               "teacher": lambda x: Features(logits=teacher[_name(views, x)])}
    terms = _method("mixup").step_losses(StepContext(batch, INFO, sources))
    got = [float(terms[f"mixup_{t}"].detach()) for t in ("cls", "rel", "kd")]
    assert got == pytest.approx(ORIGINAL["mixup"], rel=1e-5)
