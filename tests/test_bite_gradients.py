"""Every loss term of every registered method, backpropagated ALONE, trains the student and the method's own adapters
and never the teacher.

The existing routing tests backpropagate the weighted total, in which CE alone already reaches every student
parameter: a method whose student side is detached (`kd_loss(s.logits.detach(), ...)`) passes them. Here each term is
backpropagated by itself, through a real offline regime built by tests/method_harness.py, and multi-part terms are
checked part by part on leaf feature tensors.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdzoo.distillers import METHODS
from kdzoo.distillers.dist import dist_parts
from kdzoo.distillers.dkd import dkd_parts
from kdzoo.distillers.rkd import rkd_angle_loss, rkd_distance_loss
from kdzoo.models import get_head
from tests.method_harness import (  # noqa: F401
    build_regime,
    one_thread,
    random_batch,
    start_epoch,
    step_info,
)

STUDENT, TEACHER = "resnet8", "resnet14"

# Parameters that get no gradient by construction, per method (checked to be exactly zero where listed):
# DCD's bias b is added to every entry of the B x B logits; both the row softmax (CE) and the column softmax
# (consistency) are invariant to a constant shift, so d loss / d b = 0 identically.
NO_GRAD_BY_DESIGN = {"dcd": {"b"}}
HEAD_TERMS = {"aux_ce", "hsakd"}  # terms on an _aux model's rotation heads alone
EPOCH_PASS_PARAMS = {"proto": {"proto": {"clusters": [2, 4], "warmup_epochs": 1, "negatives": 1, "redo": 1}},
                     "nd": {"nd": {}}}
POOLED_TERMS = {"proto", "trans_ce"}  # proto scores pooled features; trans_ce trains the transformer branch
FEATURE_TERMS = {"ckd_inter_feat"}  # CKD's comparison of intermediate features: no logits, the inner adapters


def _exempt(name: str, term: str, own) -> set:
    """Adapters a term leaves alone by design: ckd_inter's logit terms do not touch its inner method's adapters."""
    if name == "ckd_inter" and term not in FEATURE_TERMS:
        return {n for n, _ in own}
    return NO_GRAD_BY_DESIGN.get(name, set())


def _loss_for(name: str) -> dict:
    """A recipe that runs method `name` (and CE where the method acts in the main stage)."""
    cls = METHODS.get(name)
    loss = {term: 1.0 for term in cls.term_names()}
    if name != "ce":
        loss["ce"] = 1.0
    return loss


def _nonzero(p: torch.Tensor) -> bool:
    return p.grad is not None and bool(p.grad.abs().sum() > 0) and bool(torch.isfinite(p.grad).all())


def _student_stem_and_head(regime):
    student = regime.student
    convs = [m for m in student.modules() if isinstance(m, torch.nn.Conv2d)]
    return convs[0].weight, get_head(student).weight


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("bite_teachers")




def test_every_method_is_covered():
    names = set(METHODS.names())
    assert {"ce", "kd", "dkd", "dist", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst",
            "crd", "reviewkd", "srrl", "semckd", "simkd", "rrd", "dcd"} <= names


# Methods of another regime than offline, with their routing tests there.
OTHER_REGIME = {"byol": "tests/test_self_supervised.py (online network and predictor trained, target none)",
                "mlkd": "tests/test_methods_mlkd.py (batches with the strong view: one program step)",
                "dot": "tests/test_methods_dot.py (no loss term: the optimizer step)"}


@pytest.mark.parametrize("name", sorted(set(METHODS.names()) - set(OTHER_REGIME)))
def test_each_term_alone_trains_student_and_adapters_not_teacher(folder, name):
    aux = "_aux" if METHODS.get(name).student_needs.heads else ""  # methods on rotation heads need _aux models
    student = STUDENT + ("_trans" if name == "trans_kd" else aux)  # the transformer branch is a _trans model's
    teacher = None if name in ("ce", "trans_kd", "mixup_ce", "uskd") else TEACHER + aux
    regime = build_regime(folder, student, teacher, _loss_for(name), EPOCH_PASS_PARAMS.get(name), batch_size=8,
                          n_train=40)
    if name in EPOCH_PASS_PARAMS:
        start_epoch(regime)  # clusters first: the term acts from then on
    batch = random_batch(regime, batch_size=8)
    stem, head = _student_stem_and_head(regime)
    method = regime.methods[name]
    exempt = NO_GRAD_BY_DESIGN.get(name, set())
    own = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    others = [p for m_name, m in regime.methods.items() if m_name != name for p in m.parameters()]
    checked = 0
    for phase in regime.phases():
        regime.train(True)
        terms = phase.step(batch, step_info())
        for term, weight in phase.weights.items():
            if weight == 0:
                continue
            assert term in terms, (phase.name, term, list(terms))
            value = terms[term]
            assert value.requires_grad, f"{phase.name}/{term}: the term carries no graph at all"
            for p in regime.bundle.parameters():
                p.grad = None
            value.backward(retain_graph=True)
            checked += 1
            own = [(n, p) for n, p in method.named_parameters() if p.requires_grad]  # FT freezes in main
            exempt = _exempt(name, term, own)
            # never the teacher (its live head is reused by SRRL and SimKD)
            if regime.teacher is not None:
                assert all(p.grad is None for p in regime.teacher.parameters()), f"{phase.name}/{term}: teacher"
            in_phase = {id(p) for p in phase.params}
            if term == "ce":
                assert _nonzero(stem) and _nonzero(head)
                assert all(p.grad is None or not p.grad.any() for _, p in own), "ce trains a method adapter"
                continue
            assert all(p.grad is None or not p.grad.any() for p in others)
            # the student: its stem feeds every feature, so a live student side always reaches it ...
            student_trained = phase.name == "main" or any(id(p) in in_phase for p in regime.student.parameters())
            if student_trained:
                assert _nonzero(stem), f"{phase.name}/{term}: no gradient reaches the student (detached?)"
            else:  # FT's paraphraser stage trains on teacher maps alone
                assert all(p.grad is None for p in regime.student.parameters())
            # ... and logit terms reach its classifier, rotation-head terms its heads
            if term in HEAD_TERMS:
                assert all(_nonzero(p) for p in regime.student.fcs.parameters()), f"{term}: no gradient to heads"
                assert head.grad is None or not head.grad.any(), f"{term} trains the backbone classifier"
            elif METHODS.get(name).student_needs.logits and name not in ("reviewkd",) and \
                    term not in FEATURE_TERMS | POOLED_TERMS:
                assert _nonzero(head), f"{phase.name}/{term}: no gradient reaches the student's logits"
            # the method's own trainable adapters that this phase optimises
            expected = [(n, p) for n, p in own if id(p) in in_phase and n not in exempt]
            missing = [n for n, p in expected if not _nonzero(p)]
            assert not missing, f"{phase.name}/{term}: no gradient for adapters {missing[:6]}"
            for n, p in own:
                if n in exempt:
                    assert p.grad is None or float(p.grad.abs().max()) < 1e-6, n
    assert checked >= 1


# Parts of multi-part terms, on leaf features --------------------------------------------------------------------
def _leaf(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 2).requires_grad_(True)


@pytest.mark.parametrize("part", [0, 1])
def test_dkd_each_part_reaches_the_student(part):
    z_s, z_t = _leaf(6, 5, seed=1), _leaf(6, 5, seed=2)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    dkd_parts(z_s, z_t, target, 4.0)[part].backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0


@pytest.mark.parametrize("part", [0, 1])
def test_dist_each_part_reaches_the_student(part):
    z_s, z_t = _leaf(6, 5, seed=3), _leaf(6, 5, seed=4)
    dist_parts(z_s, z_t, 4.0)[part].backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0


@pytest.mark.parametrize("fn", [rkd_distance_loss, rkd_angle_loss])
def test_rkd_each_part_reaches_the_student(fn):
    e_s, e_t = _leaf(6, 7, seed=5), _leaf(6, 7, seed=6)
    fn(e_s, e_t).backward()
    assert e_s.grad is not None and e_s.grad.abs().sum() > 0


def _srrl_regime(folder):
    return build_regime(folder, STUDENT, TEACHER, {"ce": 1.0, "srrl": 1.0}, batch_size=8, n_train=40)


def test_srrl_second_term_carries_the_gradient_through_the_teacher_head(folder):
    """grad of the srrl term w.r.t. the student's pooled feature equals that of an independent
    MSE(h, f_t) + MSE(W_t h + b_t, z_t): a detached second term drops the second half of the gradient."""
    from kdzoo.models.features import Features

    regime = _srrl_regime(folder)
    method = regime.methods["srrl"]
    method.train(True)
    head = method.teacher_head.module
    W, b = head.weight.detach(), head.bias.detach()
    pooled = _leaf(8, 64, seed=7)
    t_pooled, t_logits = torch.randn(8, 64), torch.randn(8, 10) * 3
    loss = method.losses(None, Features(pooled=pooled), Features(pooled=t_pooled, logits=t_logits),
                         step_info())["srrl"]
    (g_method,) = torch.autograd.grad(loss, pooled)
    # reference: the same connector (fresh forward), the two MSEs written out
    p2 = pooled.detach().clone().requires_grad_(True)
    h = method.connector(p2)
    ref = ((h - t_pooled) ** 2).mean() + ((h @ W.t() + b - t_logits) ** 2).mean()
    (g_ref,) = torch.autograd.grad(ref, p2)
    first_only = ((method.connector(p2) - t_pooled) ** 2).mean()
    (g_first,) = torch.autograd.grad(first_only, p2)
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(g_method, g_ref, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(g_ref, g_first, rtol=1e-3, atol=1e-6)  # the second term matters here


def test_dcd_consistency_part_carries_gradient():
    """The DCD term's gradient w.r.t. the student embedding equals the reference CE + alpha*KL gradient."""
    from kdzoo.distillers.dcd import dcd_loss

    e_s = F.normalize(torch.randn(6, 8), dim=1).requires_grad_(True)
    e_t = F.normalize(torch.randn(6, 8), dim=1)
    tau, b = torch.tensor(1.0), torch.tensor(0.0)
    (g,) = torch.autograd.grad(dcd_loss(e_s, e_t, tau, b, 10.0, 0.5), e_s)
    x = e_s.detach().clone().requires_grad_(True)
    logits = math.e * (x @ e_t.t())  # exp(tau) with tau 1, bias 0
    ce = -torch.log_softmax(logits, 1).diagonal().mean()
    p = torch.softmax(logits, 0).t()
    kl = (p * (torch.log(p) - torch.log_softmax(logits, 1))).sum(1).mean()
    (g_ref,) = torch.autograd.grad(ce + 0.5 * kl, x, retain_graph=True)
    (g_ce,) = torch.autograd.grad(ce, x)
    assert torch.allclose(g, g_ref, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(g_ref, g_ce, rtol=1e-3, atol=1e-6)
