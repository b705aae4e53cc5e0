"""Contrastive methods: CRD, RRD, DCD.

Losses against independent computations (explicit loops from the papers' definitions), CRD's memory bank, negative
sampling and efficient scoring, RRD's FIFO queue, DCD's learnable temperature and bias, gradient routing in a real
regime, state round trips, and short CLI runs on digits.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from kdzoo.core.batch import Batch, StepInfo
from kdzoo.distillers.base import SetupContext
from kdzoo.distillers.crd import (
    CRD,
    CRDParams,
    class_blocks,
    contrast_scores,
    gather_scores,
    log_mean_exp,
    momentum_update,
    nce_loss_scores,
    sample_negatives,
)
from kdzoo.distillers.dcd import DCD, DCDParams, dcd_loss
from kdzoo.distillers.rrd import RRD, RRDParams, enqueue, relational_loss
from kdzoo.errors import KdzooError
from kdzoo.models.features import Features
from tests.method_harness import (
    assert_gradient_routing,
    build_regime,
    random_batch,
    run_digits,
)

EPS = 1e-7  # RepDistiller's eps
STEP = StepInfo(epoch=0, epochs=1, step=0, steps_per_epoch=1)


def nce_loss(x: Tensor, n_data: int) -> Tensor:
    """The reference the fused CRD loss is checked against, RepDistiller's ContrastLoss: x (B, K+1) = exp(s / T) / Z with the positive in column 0.

    -(sum_b log(x_b0 / (x_b0 + K P_n + eps)) + sum_{b, k>0} log(K P_n / (x_bk + K P_n + eps))) / B, P_n = 1/n_data.
    """
    m = x.shape[1] - 1
    m_pn = m / float(n_data)
    pos = x[:, 0]
    log_d1 = torch.log(pos / (pos + (m_pn + EPS)))
    log_d0 = torch.log(m_pn / (x[:, 1:] + (m_pn + EPS)))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


def make_ctx(s_dim: int, t_dim: int, targets) -> SetupContext:
    return SetupContext(student=nn.Identity(), teacher=nn.Identity(),
                        student_shapes=Features(pooled=torch.Size([2, s_dim])),
                        teacher_shapes=Features(pooled=torch.Size([2, t_dim])),
                        train_targets=torch.as_tensor(targets), batch_size=4)


def feats(x) -> Features:
    return Features(pooled=torch.as_tensor(x, dtype=torch.float32))


def batch_for(index, targets) -> Batch:
    index = torch.as_tensor(index)
    return Batch(inputs=torch.zeros(len(index), 1), targets=torch.as_tensor(targets)[index], index=index)


def np_embed(linear: nn.Linear, x) -> np.ndarray:
    """Linear layer then row-wise L2 normalisation, in float64 numpy."""
    w = linear.weight.detach().double().numpy()
    b = linear.bias.detach().double().numpy()
    y = np.asarray(x, dtype=np.float64) @ w.T + b
    return y / np.sqrt((y ** 2).sum(axis=1, keepdims=True))


def dot(a, b) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b))


def log_softmax_list(values) -> list[float]:
    top = max(values)
    lse = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - lse for v in values]


# ------------------------------------------------------------------------------------------------------------ CRD
def nce_reference(x, n_data: int) -> float:
    """RepDistiller's Eq. (18) with P_n = 1/n_data, written out sample by sample."""
    m = len(x[0]) - 1
    m_pn = m / n_data
    total = 0.0
    for row in x:
        total += math.log(row[0] / (row[0] + m_pn + 1e-7))
        for v in row[1:]:
            total += math.log(m_pn / (v + m_pn + 1e-7))
    return -total / len(x)


def test_nce_loss_hand_case():
    # every score equals m * P_n: each positive and each negative term is log(1/2) (up to eps)
    n_data, k = 10, 4
    x = torch.full((3, k + 1), k / n_data, dtype=torch.float64)
    assert nce_loss(x, n_data).item() == pytest.approx((k + 1) * math.log(2), rel=1e-5)


def test_nce_loss_matches_reference():
    x = [[0.9, 0.1, 0.3, 0.02], [0.05, 0.2, 0.7, 0.4]]
    got = nce_loss(torch.tensor(x, dtype=torch.float64), 50).item()
    assert got == pytest.approx(nce_reference(x, 50), rel=1e-9)


def test_log_space_nce_equals_the_original_form():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(5, 33, generator=g, dtype=torch.float64) / 0.07  # v.m / T for |v.m| ~ 1
    for z in (None, 3.0e4):
        log_z = (log_mean_exp(scores[:, 0], scores[:, 1:]) + math.log(1000)) if z is None \
            else torch.tensor(math.log(z), dtype=torch.float64)
        x = torch.exp(scores - log_z)
        want = nce_loss(x, 1000)
        got = nce_loss_scores(scores[:, 0], scores[:, 1:], log_z, 1000)
        assert got.item() == pytest.approx(want.item(), rel=1e-9)
    assert log_mean_exp(scores[:, 0], scores[:, 1:]).exp().item() == pytest.approx(scores.exp().mean().item(), rel=1e-9)


def crd_reference(e_s, e_t, mem_s, mem_t, idx, T, n_data, z_s=None, z_t=None):
    """Both anchors against the other side's bank, exp(./T)/Z, NCE on each; Z from this batch when not given."""
    out_s = [[math.exp(dot(mem_t[j], e_s[b]) / T) for j in row] for b, row in enumerate(idx)]
    out_t = [[math.exp(dot(mem_s[j], e_t[b]) / T) for j in row] for b, row in enumerate(idx)]
    count = len(idx) * len(idx[0])
    z_s = z_s if z_s is not None else sum(map(sum, out_s)) / count * n_data
    z_t = z_t if z_t is not None else sum(map(sum, out_t)) / count * n_data
    loss = (nce_reference([[v / z_s for v in row] for row in out_s], n_data)
            + nce_reference([[v / z_t for v in row] for row in out_t], n_data))
    return loss, z_s, z_t


TARGETS = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 3, 3]  # 12 samples, 4 classes


def small_crd(seed=0, **kw) -> CRD:
    torch.manual_seed(seed)
    params = CRDParams(**{"feat_dim": 4, "nce_k": 5, **kw})
    return CRD(params, make_ctx(6, 5, TARGETS))


def test_crd_loss_matches_independent_computation():
    crd = small_crd()
    g = torch.Generator().manual_seed(3)
    index = torch.tensor([4, 10, 0])
    f_s, f_t = torch.randn(3, 6, generator=g), torch.randn(3, 5, generator=g)
    mem_s, mem_t = crd.memory_s.double().numpy().copy(), crd.memory_t.double().numpy().copy()
    torch.manual_seed(11)
    got = crd.losses(batch_for(index, TARGETS), feats(f_s), feats(f_t), STEP)["crd"]
    torch.manual_seed(11)
    idx = crd.contrast_indices(index).tolist()  # the same draw
    e_s, e_t = np_embed(crd.embed_s.linear, f_s), np_embed(crd.embed_t.linear, f_t)
    want, z_s, z_t = crd_reference(e_s, e_t, mem_s, mem_t, idx, 0.07, len(TARGETS))
    assert got.item() == pytest.approx(want, rel=1e-4)
    assert crd.z_s.item() == pytest.approx(z_s, rel=1e-4) and crd.z_t.item() == pytest.approx(z_t, rel=1e-4)
    # a second batch keeps Z from the first one (after the bank update of the first)
    crd.after_step()
    mem_s, mem_t = crd.memory_s.double().numpy().copy(), crd.memory_t.double().numpy().copy()
    index2 = torch.tensor([1, 2])
    f_s2, f_t2 = torch.randn(2, 6, generator=g), torch.randn(2, 5, generator=g)
    torch.manual_seed(12)
    got2 = crd.losses(batch_for(index2, TARGETS), feats(f_s2), feats(f_t2), STEP)["crd"]
    torch.manual_seed(12)
    idx2 = crd.contrast_indices(index2).tolist()
    want2, _, _ = crd_reference(np_embed(crd.embed_s.linear, f_s2), np_embed(crd.embed_t.linear, f_t2),
                                mem_s, mem_t, idx2, 0.07, len(TARGETS), z_s, z_t)
    assert got2.item() == pytest.approx(want2, rel=1e-4)
    assert crd.z_s.item() == pytest.approx(z_s, rel=1e-4)


def test_crd_contrast_indices_start_with_the_sample_itself():
    crd = small_crd()
    index = torch.tensor([5, 11, 3])
    idx = crd.contrast_indices(index)
    assert idx.shape == (3, 6) and torch.equal(idx[:, 0], index)


def test_momentum_update_hand_case():
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    momentum_update(bank, torch.tensor([0]), torch.tensor([[0.0, 1.0]]), 0.5)
    # 0.5 * [1, 0] + 0.5 * [0, 1] = [0.5, 0.5] -> normalised [1/sqrt2, 1/sqrt2]
    s = 1 / math.sqrt(2)
    assert torch.allclose(bank, torch.tensor([[s, s], [0.6, 0.8], [0.0, 1.0]]))


def test_crd_memory_bank_update_after_step():
    crd = small_crd()
    g = torch.Generator().manual_seed(4)
    index = torch.tensor([7, 2, 9])
    f_s, f_t = torch.randn(3, 6, generator=g), torch.randn(3, 5, generator=g)
    before_s, before_t = crd.memory_s.clone(), crd.memory_t.clone()
    crd.losses(batch_for(index, TARGETS), feats(f_s), feats(f_t), STEP)
    assert torch.equal(crd.memory_s, before_s)  # the loss itself leaves the banks alone
    crd.after_step()
    e_s, e_t = np_embed(crd.embed_s.linear, f_s), np_embed(crd.embed_t.linear, f_t)
    for bank, old, e in ((crd.memory_s, before_s, e_s), (crd.memory_t, before_t, e_t)):
        for row in range(len(TARGETS)):
            if row in index.tolist():
                b = index.tolist().index(row)
                v = [0.5 * float(old[row, c]) + 0.5 * e[b, c] for c in range(4)]
                norm = math.sqrt(sum(x * x for x in v))
                assert bank[row].tolist() == pytest.approx([x / norm for x in v], rel=1e-5, abs=1e-6)
            else:
                assert torch.equal(bank[row], old[row])
    after = crd.memory_s.clone()
    crd.after_step()  # nothing pending: no second update
    assert torch.equal(crd.memory_s, after)


def test_negative_sampling_other_classes_uniformly():
    sizes = [3, 10, 1, 20, 6]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    order, counts, starts = class_blocks(labels)
    k = 20000
    neg = sample_negatives(labels, order, counts, starts, k, generator=torch.Generator().manual_seed(1))
    assert neg.shape == (len(labels), k)
    assert (labels[neg] != labels.unsqueeze(1)).all(), "a negative of the anchor's own class"
    n = len(labels)
    for c, size in enumerate(sizes):
        rows = neg[labels == c].flatten()
        hits = torch.bincount(rows, minlength=n).double()
        others = labels != c
        assert (hits[~others] == 0).all()
        expected = size * k / (n - size)
        assert (hits[others] > 0).all(), f"class {c}: some other-class sample never drawn"
        assert ((hits[others] - expected).abs() / expected).max() < 0.15, f"class {c}: not uniform"


def test_efficient_scores_equal_gather_form():
    g = torch.Generator().manual_seed(5)
    bank = torch.randn(300, 16, generator=g)
    idx = torch.randint(0, 300, (6, 41), generator=g)
    anchor = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1)
    a1, a2 = anchor.clone().requires_grad_(), anchor.clone().requires_grad_()
    fast, slow = contrast_scores(a1, bank, idx), gather_scores(a2, bank, idx)
    assert 300 <= 41 * 16  # the matmul path was taken
    for b, j in ((0, 0), (3, 17), (5, 40)):
        assert slow[b, j].item() == pytest.approx(dot(bank[idx[b, j]], anchor[b]), rel=1e-5, abs=1e-6)
    assert torch.allclose(fast, slow, atol=1e-5)
    weights = torch.randn(6, 41, generator=g)
    (fast.exp() * weights).sum().backward()
    (slow.exp() * weights).sum().backward()
    assert torch.allclose(a1.grad, a2.grad, atol=1e-4)
    # a bank larger than (K+1) * dim takes the gather path
    idx_small = idx[:, :2]
    assert 300 > 2 * 16
    assert torch.allclose(contrast_scores(anchor, bank, idx_small), torch.gather(anchor @ bank.t(), 1, idx_small),
                          atol=1e-5)


def test_crd_state_survives_state_dict_round_trip():
    crd = small_crd(seed=0)
    g = torch.Generator().manual_seed(6)
    index = torch.tensor([1, 6, 10])
    f_s, f_t = torch.randn(3, 6, generator=g), torch.randn(3, 5, generator=g)
    crd.losses(batch_for(index, TARGETS), feats(f_s), feats(f_t), STEP)
    crd.after_step()
    state = crd.state_dict()
    assert {"memory_s", "memory_t", "z_s", "z_t"} <= set(state)
    assert not {"order", "counts", "starts", "labels"} & set(state)  # derived from the labels, rebuilt on start
    fresh = small_crd(seed=99)
    assert not torch.equal(fresh.memory_s, crd.memory_s) and fresh.z_s.item() < 0
    fresh.load_state_dict(state)
    for name in ("memory_s", "memory_t", "z_s", "z_t"):
        assert torch.equal(getattr(fresh, name), getattr(crd, name))
    torch.manual_seed(7)
    a = crd.losses(batch_for(index, TARGETS), feats(f_s), feats(f_t), STEP)["crd"]
    torch.manual_seed(7)
    b = fresh.losses(batch_for(index, TARGETS), feats(f_s), feats(f_t), STEP)["crd"]
    assert a.item() == b.item()


def test_crd_needs_two_classes():
    with pytest.raises(KdzooError, match="two classes"):
        CRD(CRDParams(feat_dim=4, nce_k=3), make_ctx(6, 5, [1, 1, 1]))


# ------------------------------------------------------------------------------------------------------------ RRD
def rrd_reference(e_s, e_t, queue, t_s, t_t) -> float:
    total = 0.0
    for b in range(len(e_s)):
        log_p_s = log_softmax_list([dot(e_s[b], q) / t_s for q in queue])
        p_t = [math.exp(v) for v in log_softmax_list([dot(e_t[b], q) / t_t for q in queue])]
        total -= sum(p * lp for p, lp in zip(p_t, log_p_s))
    return total / len(e_s)


def test_relational_loss_hand_case():
    # every similarity equal: both distributions uniform over K, cross-entropy log K
    queue = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    e = torch.tensor([[0.6, 0.8, 0.0]])
    assert relational_loss(e, e, queue, 0.04, 0.1).item() == pytest.approx(math.log(4), rel=1e-6)


def test_rrd_loss_matches_independent_computation():
    torch.manual_seed(0)
    rrd = RRD(RRDParams(feat_dim=4, nce_k=7), make_ctx(6, 5, TARGETS))
    g = torch.Generator().manual_seed(8)
    rrd.queue.copy_(torch.nn.functional.normalize(torch.randn(7, 4, generator=g), dim=1))
    f_s, f_t = torch.randn(3, 6, generator=g), torch.randn(3, 5, generator=g)
    got = rrd.losses(batch_for([0, 1, 2], TARGETS), feats(f_s), feats(f_t), STEP)["rrd"]
    want = rrd_reference(np_embed(rrd.embed_s.linear, f_s), np_embed(rrd.embed_t.linear, f_t),
                         rrd.queue.double().numpy(), 0.04, 0.10)
    assert got.item() == pytest.approx(want, rel=1e-4)


def test_rrd_initial_queue_as_the_original():
    torch.manual_seed(0)
    rrd = RRD(RRDParams(), make_ctx(6, 5, TARGETS))
    assert rrd.queue.shape == (16384, 128) and rrd.queue_ptr.item() == 0
    assert torch.allclose(rrd.queue.norm(dim=0), torch.ones(128))  # randn normalised along dim 0
    assert not any(p.requires_grad for p in rrd.embed_t.parameters())  # no gradient reaches it in the original
    assert {"queue", "queue_ptr"} <= set(rrd.state_dict())


def test_rrd_queue_is_fifo_of_teacher_embeddings():
    torch.manual_seed(0)
    rrd = RRD(RRDParams(feat_dim=4, nce_k=10), make_ctx(6, 5, TARGETS))
    g = torch.Generator().manual_seed(9)
    teacher_rows, student_rows = [], []
    for step in range(3):  # 3 batches of 4 into 10 slots: the third wraps around
        f_s, f_t = torch.randn(4, 6, generator=g), torch.randn(4, 5, generator=g)
        rrd.losses(batch_for([0, 1, 2, 3], TARGETS), feats(f_s), feats(f_t), STEP)
        assert rrd.queue_ptr.item() == (4 * step) % 10  # enqueued after the step, not during the loss
        rrd.after_step()
        teacher_rows.append(np_embed(rrd.embed_t.linear, f_t))
        student_rows.append(np_embed(rrd.embed_s.linear, f_s))
    queue = rrd.queue.double().numpy()
    assert rrd.queue_ptr.item() == 2
    expected_slots = {0: (2, 2), 1: (2, 3), 2: (0, 2), 3: (0, 3), 4: (1, 0), 5: (1, 1), 6: (1, 2), 7: (1, 3),
                      8: (2, 0), 9: (2, 1)}
    for slot, (batch, row) in expected_slots.items():
        assert np.allclose(queue[slot], teacher_rows[batch][row], atol=1e-6), slot
    # the newest B rows behind the pointer are exactly the last batch's teacher embeddings
    newest = [(rrd.queue_ptr.item() - 4 + j) % 10 for j in range(4)]
    assert np.allclose(queue[newest], teacher_rows[-1], atol=1e-6)
    students = np.concatenate(student_rows)
    assert not any(np.allclose(q, s, atol=1e-4) for q in queue for s in students)


def test_enqueue_more_keys_than_slots():
    queue, ptr = torch.zeros(3, 1), torch.tensor([1])
    enqueue(queue, ptr, torch.arange(5.0).unsqueeze(1))  # as if 0..4 were pushed one at a time from slot 1
    assert queue.flatten().tolist() == [2.0, 3.0, 4.0] and ptr.item() == 0


# ------------------------------------------------------------------------------------------------------------ DCD
def dcd_reference(e_s, e_t, tau, b, max_tau, alpha) -> float:
    n = len(e_s)
    scale = min(max(math.exp(tau), 0.0), max_tau)
    logits = [[scale * dot(e_s[i], e_t[j]) + b for j in range(n)] for i in range(n)]
    ce = -sum(log_softmax_list(logits[i])[i] for i in range(n)) / n
    kl = 0.0
    for i in range(n):
        log_q = log_softmax_list(logits[i])  # student i over the teachers
        log_p = log_softmax_list([logits[j][i] for j in range(n)])  # teacher i over the students
        kl += sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q))
    return ce + alpha * kl / n


def test_dcd_loss_hand_case():
    # e_s = e_t = identity, exp(tau) = 1, b = 0: logits = I; CE = log(1 + 1/e); symmetric logits, so KL = 0
    eye = torch.eye(2)
    got = dcd_loss(eye, eye, torch.tensor(0.0), torch.tensor(0.0), 10.0, 0.5)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


@pytest.mark.parametrize("tau,b", [(1.0, 0.0), (0.3, -0.7), (3.0, 0.2)])  # exp(3) > 10: clamped
def test_dcd_loss_matches_independent_computation(tau, b):
    torch.manual_seed(0)
    dcd = DCD(DCDParams(feat_dim=4, init_tau=tau, init_b=b), make_ctx(6, 5, TARGETS))
    g = torch.Generator().manual_seed(10)
    f_s, f_t = torch.randn(4, 6, generator=g), torch.randn(4, 5, generator=g)
    got = dcd.losses(batch_for([0, 1, 2, 3], TARGETS), feats(f_s), feats(f_t), STEP)["dcd"]
    want = dcd_reference(np_embed(dcd.embed_s.linear, f_s), np_embed(dcd.embed_t.linear, f_t), tau, b, 10.0, 0.5)
    assert got.item() == pytest.approx(want, rel=1e-4)
    got.backward()
    assert dcd.tau.grad is not None and dcd.b.grad is not None
    if math.exp(tau) > 10:
        assert dcd.tau.grad.item() == 0.0  # the clamp stops the gradient, as in the original
    else:
        assert dcd.tau.grad.abs().item() > 1e-4


# ------------------------------------------------------------------------------------- all three: precision, routing
def test_each_loss_reaches_student_features_and_its_adapters():
    g = torch.Generator().manual_seed(12)
    batch = batch_for([0, 3, 5, 10], TARGETS)
    for cls, params in ((CRD, CRDParams(feat_dim=4, nce_k=5)), (RRD, RRDParams(feat_dim=4, nce_k=8)),
                        (DCD, DCDParams(feat_dim=4))):
        torch.manual_seed(0)
        method = cls(params, make_ctx(6, 5, TARGETS))
        f_s = torch.randn(4, 6, generator=g, requires_grad=True)
        f_t = torch.randn(4, 5, generator=g)  # the teacher's features arrive detached
        method.losses(batch, feats(f_s), feats(f_t), STEP)[cls.name].backward()
        assert f_s.grad is not None and f_s.grad.abs().sum() > 0, cls.name
        trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
        assert all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None]


def test_losses_are_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(11)
    f_s, f_t = torch.randn(4, 6, generator=g), torch.randn(4, 5, generator=g)
    batch = batch_for([0, 3, 5, 10], TARGETS)
    for cls, params in ((CRD, CRDParams(feat_dim=4, nce_k=5)), (RRD, RRDParams(feat_dim=4, nce_k=8)),
                        (DCD, DCDParams(feat_dim=4))):
        torch.manual_seed(0)
        method = cls(params, make_ctx(6, 5, TARGETS))
        torch.manual_seed(1)
        ref = method.losses(batch, feats(f_s), feats(f_t), STEP)[cls.name]
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = method.losses(batch, feats(f_s), feats(f_t), STEP)[cls.name]
        assert low.dtype == torch.float32 and torch.isfinite(low)
        assert low.item() == pytest.approx(ref.item(), rel=0.05)


@pytest.mark.parametrize("student", ["resnet8x4", "ShuffleV1"])
def test_gradient_routing(tmp_path, student):
    regime = build_regime(tmp_path, student, "resnet32x4", loss={"ce": 1.0, "crd": 0.8, "rrd": 1.0, "dcd": 1.0},
                          num_classes=10, batch_size=8)
    batch = random_batch(regime, batch_size=8)
    methods = regime.methods
    assert_gradient_routing(regime, batch)
    assert methods["dcd"].tau.grad.abs().item() > 0 and methods["dcd"].b.grad is not None
    assert all(p.grad is None for p in methods["rrd"].embed_t.parameters())
    # bank and queue updates happen in after_step and land in the state that a resume restores
    bank, queue = methods["crd"].memory_s.clone(), methods["rrd"].queue.clone()
    regime.after_step("main")
    assert not torch.equal(methods["crd"].memory_s[batch.index], bank[batch.index])
    assert not torch.equal(methods["rrd"].queue[:8], queue[:8]) and methods["rrd"].queue_ptr.item() == 8
    state = regime.state_dict()["bundle"]
    assert {"methods.crd.memory_s", "methods.crd.memory_t", "methods.crd.z_s", "methods.crd.z_t",
            "methods.rrd.queue", "methods.rrd.queue_ptr", "methods.dcd.tau", "methods.dcd.b"} <= set(state)
    assert state["methods.crd.memory_s"].shape == (200, 128)


# ------------------------------------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize("recipe,term,student", [
    ("crd", "crd", "resnet8x4"), ("crd", "crd", "ShuffleV1"), ("crd_kd", "crd", "resnet8x4"),
    ("rrd", "rrd", "resnet8x4"), ("rrd", "rrd", "ShuffleV1"),
    ("dcd", "dcd", "resnet8x4"), ("dcd", "dcd", "ShuffleV1"),
])
def test_cli_digits(digits_teacher_32x4, tmp_path, recipe, term, student):
    record = run_digits(recipe, digits_teacher_32x4, tmp_path / "x", f"student.arch={student}", "dataset.subset=200")
    assert math.isfinite(record[f"train_{term}"])
    if recipe == "crd_kd":
        assert math.isfinite(record["train_kd"])


def test_crd_instance_negatives_are_any_other_image_and_read_no_labels():
    import torch as _torch

    from kdzoo.distillers.crd import CRD, CRDParams
    from tests.method_harness import probed_pair, setup_context

    _, _, s_shapes, t_shapes = probed_pair("resnet8", "resnet8")
    ctx = setup_context(s_shapes, t_shapes)
    ctx.train_targets = _torch.zeros(50, dtype=_torch.long)  # one class: class negatives would be impossible
    method = CRD(CRDParams(nce_k=200, negatives="instance"), ctx)
    index = _torch.arange(8)
    neg = method.negatives(index)
    assert neg.shape == (8, 200) and not bool((neg == index[:, None]).any())  # never the image itself
    assert set(neg.flatten().tolist()) == set(range(50)) - set()  # all images serve as negatives of others
    ctx.train_targets = _torch.randint(0, 10, (50,))
    _torch.manual_seed(0)
    a = CRD(CRDParams(nce_k=200, negatives="instance"), ctx).negatives(index)
    ctx.train_targets = _torch.randint(0, 10, (50,))
    _torch.manual_seed(0)
    b = CRD(CRDParams(nce_k=200, negatives="instance"), ctx).negatives(index)
    assert _torch.equal(a, b)  # labels play no part
