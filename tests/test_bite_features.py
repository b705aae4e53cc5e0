"""Which features each method reads: every registered method is fed Features in which each map it should NOT use is
NaN (the loss must stay finite) and each map it should use is perturbed in turn (the loss must change, and for the
student's maps the gradient must reach them).

Catches stage-selection mutations such as AT including the stem, SP taking the penultimate map, FSP dropping the
stem pair, FitNet reading another hint layer or ReviewKD comparing against post-activation teacher maps.
The expected slots come from /work/shared/methods.md (RepDistiller: feat[0] the stem, feat[1:-1] the stage maps,
feat[-2] the last stage map, feat[-1] the pooled vector) and the method modules' docstrings.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kdzoo.core.batch import Batch
from kdzoo.distillers import METHODS
from kdzoo.models.features import Features
from tests.method_harness import probed_pair, setup_context, step_info

B = 8
N_STAGES = 4  # resnet8 / resnet14: stem, layer1, layer2, layer3

# (side, field, index): side "s" student / "t" teacher; index None for logits and pooled.
N_HEADS = 3  # an _aux model's rotation heads (their logits: 4 * classes)
ALL = [(side, f, None) for side in "st" for f in ("logits", "pooled")] + \
      [(side, f, i) for side in "st" for f in ("stages", "preact") for i in range(N_STAGES)] + \
      [(side, "heads", i) for side in "st" for i in range(N_HEADS)]


def both(field, *idx):
    return {(side, field, i) for side in "st" for i in idx}


LAST, MIDDLE = N_STAGES - 1, range(1, N_STAGES)
# call: "losses" (main stage) or "init_losses" (init stage)
USED = {
    ("ce", "losses"): {("s", "logits", None)},
    ("kd", "losses"): both("logits", None),
    ("dkd", "losses"): both("logits", None),
    ("dist", "losses"): both("logits", None),
    ("ttm", "losses"): both("logits", None),
    ("wttm", "losses"): both("logits", None),
    ("nkd", "losses"): both("logits", None),
    ("ctkd", "losses"): both("logits", None),
    ("uskd", "losses"): {("s", "logits", None), ("s", "stages", LAST - 1)},  # its weak head: stages[-2] pooled
    ("ofd", "losses"): both("preact", *MIDDLE),  # pre-ReLU stage maps past the stem
    ("catkd", "losses"): both("stages", LAST),  # CAMs of the last stage map
    ("ickd", "losses"): both("stages", LAST),
    ("srd", "losses"): both("pooled", None) | both("logits", None),
    ("dist_plus", "losses"): both("logits", None) | both("stages", LAST),
    ("fitnet", "losses"): both("stages", 2),  # hint layer 2 = feat[2]
    ("at", "losses"): both("stages", *MIDDLE),  # stage maps, not the stem
    ("nst", "losses"): both("stages", *MIDDLE),
    ("vid", "losses"): both("stages", *MIDDLE),
    ("semckd", "losses"): both("stages", *MIDDLE),
    ("sp", "losses"): both("stages", LAST),  # feat[-2], the last stage map only
    ("simkd", "losses"): both("stages", LAST),
    ("ft", "losses"): both("stages", LAST),
    ("ft", "init_losses"): {("t", "stages", LAST)},  # the paraphraser sees the teacher's map alone
    ("fsp", "init_losses"): both("stages", *range(N_STAGES)),  # stem + stages: the stem pair included
    ("ab", "init_losses"): both("preact", *MIDDLE),  # pre-activation stage maps past the stem
    ("cc", "losses"): both("pooled", None),
    ("pkt", "losses"): both("pooled", None),
    ("rkd", "losses"): both("pooled", None),
    ("crd", "losses"): both("pooled", None),
    ("rrd", "losses"): both("pooled", None),
    ("dcd", "losses"): both("pooled", None),
    ("srrl", "losses"): both("pooled", None) | {("t", "logits", None)},
    # student: post-activation stage maps after the stem + pooled; teacher: pre-activation maps + pooled
    ("reviewkd", "losses"): {("s", "stages", i) for i in MIDDLE} | {("t", "preact", i) for i in MIDDLE}
                            | both("pooled", None),
    ("aux_ce", "losses"): {("s", "heads", i) for i in range(N_HEADS)},  # the joint-label CE of the heads
    ("hsakd", "losses"): both("heads", *range(N_HEADS)) | both("logits", None),
}


@pytest.fixture(scope="module")
def nets():
    return probed_pair("resnet8", "resnet14")


@pytest.fixture(scope="module")
def aux_nets():
    return probed_pair("resnet8_aux", "resnet14_aux")


def _features(shapes: Features, seed: int) -> Features:
    g = torch.Generator().manual_seed(seed)

    def make(shape):
        return torch.randn(B, *shape[1:], generator=g)

    return Features(logits=make(shapes.logits) * 3, pooled=make(shapes.pooled).abs(),
                    stages=[make(s).abs() for s in shapes.stages], preact=[make(s) for s in shapes.preact],
                    heads=[make((B, 4 * shapes.logits[1])) * 3 for _ in range(N_HEADS)])


def _get(f: Features, field, i):
    value = getattr(f, field)
    return value if i is None else value[i]


def _set(f: Features, field, i, value) -> Features:
    f = f.map(lambda x: x)  # shallow copy of the lists
    if i is None:
        setattr(f, field, value)
    else:
        getattr(f, field)[i] = value
    return f


def _build(name, nets):
    student, teacher, s_shapes, t_shapes = nets
    ctx = dataclasses.replace(setup_context(s_shapes, t_shapes, student), teacher=teacher,
                              train_targets=torch.arange(40) % 10, batch_size=B)
    cls = METHODS.get(name)
    torch.manual_seed(1)
    params = cls.Params(nce_k=512) if name == "crd" else cls.Params()  # fewer negatives: faster, same reads
    method = cls(params, ctx)
    method.train(True)
    return method


# Methods on grouped batches (step_losses over the parts' views): tests/test_ckd.py checks what they read against
# hand computations and the original CKD helpers.
GROUPED = {"ckd", "ckd_add", "ckd_mixup", "ckd_inter", "mixup", "mixup3"}


# Methods that derive inputs in their step (augment's x_aug, mixup_ce's mix), score prototypes (proto) or read a
# _trans model's branch (trans_kd): tests/test_dssrd_*.py check what they read against hand computations.
OWN_STEP = {"augment", "proto", "mixup_ce", "trans_kd", "byol",  # byol: tests/test_self_supervised.py
            "dot",  # no loss: an optimizer step (tests/test_methods_dot.py)
            "nd",  # class centres from an epoch pass first (tests/test_methods_nd.py checks it reads pooled only)
            "mlkd"}  # two views per network (tests/test_methods_mlkd.py: one program step, each view once)


def test_table_covers_every_method():
    assert {name for name, _ in USED} | GROUPED | OWN_STEP == set(METHODS.names())
    assert all(METHODS.get(name).recipes.few_sample for name in GROUPED)


@pytest.mark.parametrize("name,call", sorted(USED))
def test_method_reads_exactly_its_features(nets, aux_nets, name, call):
    if METHODS.get(name).student_needs.heads:
        nets = aux_nets
    method = _build(name, nets)
    s0, t0 = _features(nets[2], 10), _features(nets[3], 20)
    targets = torch.arange(B) % 10
    batch = Batch(inputs=torch.zeros(B, 3, 32, 32), targets=targets, index=torch.arange(B),
                  aux_targets=targets * 4 + torch.arange(B) % 4)
    fn = getattr(method, call)

    def run(s, t, grad=False):
        with torch.set_grad_enabled(grad):
            return fn(batch, s, t, step_info(epoch=5))

    base = run(s0, t0)
    assert base and all(torch.isfinite(v).all() for v in base.values()), base
    used = USED[(name, call)]
    for slot in ALL:
        side, field, i = slot
        src = s0 if side == "s" else t0
        if slot not in used:
            nan = torch.full_like(_get(src, field, i), math.nan)
            s, t = (_set(s0, field, i, nan), t0) if side == "s" else (s0, _set(t0, field, i, nan))
            out = run(s, t)
            bad = [k for k, v in out.items() if not torch.isfinite(v).all()]
            assert not bad, f"{name}.{call} reads {slot}, which it should not use"
        else:
            orig = _get(src, field, i)
            g = torch.Generator().manual_seed(99)
            changed = (orig + 0.5 * torch.randn(orig.shape, generator=g).abs() * orig.abs().mean()).clone()
            if side == "s":
                changed.requires_grad_(True)
            s, t = (_set(s0, field, i, changed), t0) if side == "s" else (s0, _set(t0, field, i, changed))
            out = run(s, t, grad=side == "s")
            diff = max(float((out[k] - base[k]).detach().abs().max()) for k in base)
            scale = max(float(v.abs().max()) for v in base.values())
            assert diff > 1e-6 * max(scale, 1e-3), f"{name}.{call} ignores {slot}, which it should use"
            if side == "s":
                total = sum(v.sum() for v in out.values())
                (grad,) = torch.autograd.grad(total, changed, allow_unused=True)
                assert grad is not None and grad.abs().sum() > 0, f"{name}.{call}: no gradient into {slot}"
