"""MLKD (Jin-Ying/Multi-Level-Logit-Distillation): its three terms equal the original KD_ours.forward_train on
held-out random logits (tests/fixtures/mlkd_reference.json says how the numbers were made), the masks' shares and
the relation matrices by hand, the original's quirks and their switches, the published settings, the `strong`
pipeline against the original's PIL ops, and one step of a real digits program on its two views."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kdzoo.config import load_config
from kdzoo.core.batch import StepInfo
from kdzoo.core.dist import DistInfo
from kdzoo.data.cifar import CIFAR100_INFO
from kdzoo.data.digits import INFO as DIGITS_INFO
from kdzoo.data.registry import _builder
from kdzoo.data.views import FixMatchRandAugment, fixmatch_cutout, pipeline
from kdzoo.distillers import METHODS
from kdzoo.distillers.mlkd import (
    batch_loss,
    class_loss,
    instance_loss,
    mlkd_losses,
    share_at_or_below_median,
)
from kdzoo.errors import ConfigError
from kdzoo.program import BuildContext
from kdzoo.program.methods import check_views
from kdzoo.regimes.offline import Offline
from tests.conftest import CONFIGS, FAST, REPO
from tests.method_harness import teacher_file

REFERENCE = json.loads((REPO / "tests" / "fixtures" / "mlkd_reference.json").read_text())
LOSS = {"ce": 0.1, "mlkd_strong_ce": 0.1, "mlkd_instance": 0.9, "mlkd_batch": 0.9, "mlkd_class": 0.9}


def _logits(case):
    g = torch.Generator().manual_seed(case["seed"])
    s_w, s_s, t_w, t_s = (torch.randn(case["n"], case["c"], generator=g, dtype=torch.float64) * case["scale"]
                          for _ in range(4))
    y = torch.randint(0, case["c"], (case["n"],), generator=g)
    if case["tied"]:
        t_w = t_w[(torch.arange(case["n"]) // 3) * 3]
    return s_w, s_s, t_w, t_s, y


# Parity with KD_ours.py ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"seed{c['seed']}-n{c['n']}-c{c['c']}")
def test_mlkd_equals_the_original_code(case):
    s_w, s_s, t_w, t_s, y = _logits(case)
    out = mlkd_losses(s_w, t_w, s_s, t_s, [case["temp"], 3.0, 5.0, 2.0, 6.0])
    assert out["instance"].item() == pytest.approx(case["loss_kd"], rel=1e-5)
    assert out["batch"].item() == pytest.approx(case["loss_bc"], rel=1e-5)
    assert out["class"].item() == pytest.approx(case["loss_cc"], rel=1e-5)
    # its loss_ce is CE on both views: kdzoo's ce (weak) plus mlkd_strong_ce
    assert (F.cross_entropy(s_w, y) + F.cross_entropy(s_s, y)).item() == pytest.approx(case["loss_ce"], rel=1e-5)
    p_t = t_w.softmax(1)
    assert share_at_or_below_median(p_t.max(1).values).item() == pytest.approx(case["sample_fraction"])
    assert share_at_or_below_median(p_t.sum(0)).item() == pytest.approx(case["class_fraction"])


def test_float32_logits_match_too():
    case = REFERENCE["cases"][0]
    s_w, s_s, t_w, t_s = (z.float() for z in _logits(case)[:4])
    out = mlkd_losses(s_w, t_w, s_s, t_s, [case["temp"], 3.0, 5.0, 2.0, 6.0])
    assert out["instance"].dtype == torch.float32
    assert out["instance"].item() == pytest.approx(case["loss_kd"], rel=1e-4)


def test_relation_terms_stay_float32_under_bf16_autocast():
    case = REFERENCE["cases"][3]
    s_w, _, t_w, _, _ = _logits(case)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_s, z_t = s_w.float().to(torch.bfloat16), t_w.float().to(torch.bfloat16)  # autocast logits are bf16
        got = batch_loss(z_s, z_t, 4.0), class_loss(z_s, z_t, 4.0)
    want = batch_loss(z_s.double(), z_t.double(), 4.0), class_loss(z_s.double(), z_t.double(), 4.0)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.item() == pytest.approx(w.item(), rel=1e-4)


# By hand -------------------------------------------------------------------------------------------------------
def test_median_share_counts_ties_and_odd_sizes_as_numpy():
    assert share_at_or_below_median(torch.tensor([4.0, 1.0, 3.0, 2.0])).item() == 0.5  # median 2.5
    assert share_at_or_below_median(torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(2 / 3)
    assert share_at_or_below_median(torch.tensor([2.0, 2.0, 2.0, 5.0, 1.0])).item() == pytest.approx(4 / 5)


def test_relation_matrices_by_hand():
    # T = 1 and logits log p: the probabilities are p itself
    p_s = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    p_t = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z_s, z_t = p_s.clamp_min(1e-300).log(), p_t.clamp_min(1e-300).log()
    # sample Gram: s = [[.5, .5], [.5, 1]], t = I -> squared differences .25 + .25 + .25 + 0 = .75, / N 2
    assert batch_loss(z_s, z_t, 1.0).item() == pytest.approx(0.375)
    # class Gram: s = [[1.25, .25], [.25, .25]], t = I -> .0625 + .0625 + .0625 + .5625 = .75, / C 2
    assert class_loss(z_s, z_t, 1.0).item() == pytest.approx(0.375)
    # instance: T^2 KL over rows / N, the two rows' KL(t || s): log 2 and, for row 2, huge (s puts 0 on class 2)
    z_s2 = torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert instance_loss(z_s2, z_t, 2.0).item() == pytest.approx(
        4 * F.kl_div(F.log_softmax(z_s2 / 2, 1), F.softmax(z_t / 2, 1), reduction="batchmean").item())


def test_strong_tail_reads_the_weak_view_as_the_original_and_the_switch_moves_it():
    s_w, s_s, t_w, t_s, _ = _logits(REFERENCE["cases"][1])
    temps = [4.0, 3.0, 5.0, 2.0, 6.0]
    f = share_at_or_below_median(t_w.softmax(1).max(1).values)
    weak = [instance_loss(s_w, t_w, T) for T in temps]
    strong = [instance_loss(s_s, t_s, T) for T in temps]
    quirk = mlkd_losses(s_w, t_w, s_s, t_s, temps)["instance"]
    assert quirk.item() == pytest.approx((f * sum(weak) + sum(strong[:3]) + weak[3] + weak[4]).item(), rel=1e-12)
    paper = mlkd_losses(s_w, t_w, s_s, t_s, temps, strong_tail_on_weak=False)["instance"]
    assert paper.item() == pytest.approx((f * sum(weak) + sum(strong)).item(), rel=1e-12)
    unmasked = mlkd_losses(s_w, t_w, s_s, t_s, temps, masks=False)
    assert unmasked["class"].item() == pytest.approx(sum(class_loss(s_w, t_w, T) for T in temps).item())
    assert unmasked["batch"].item() == pytest.approx(sum(batch_loss(s_w, t_w, T) for T in temps).item())


def test_which_views_of_the_student_each_term_trains_and_the_shares_are_constants():
    s_w, s_s, t_w, t_s = (z.clone().requires_grad_(True) for z in _logits(REFERENCE["cases"][0])[:4])
    for name, value in mlkd_losses(s_w, t_w.detach(), s_s, t_s.detach(), [4.0, 3.0, 5.0, 2.0, 6.0]).items():
        weak, strong = torch.autograd.grad(value, [s_w, s_s], allow_unused=True)
        assert weak is not None and weak.abs().sum() > 0, name
        assert (strong is not None and strong.abs().sum() > 0) == (name == "instance"), name  # relations: weak only
    assert not share_at_or_below_median(t_w).requires_grad  # a mask, as the original's bool mask: no gradient


# Published settings ----------------------------------------------------------------------------------------------
def test_published_defaults_weights_views_and_pairs():
    cls = METHODS.get("mlkd")
    p = cls.Params()
    assert (p.T, p.more_temperatures, p.strong_view, p.masks, p.strong_tail_on_weak) == \
        (4.0, [3.0, 5.0, 2.0, 6.0], "strong", True, True)
    assert cls.recipes.loss == LOSS  # CE_WEIGHT 0.1 on both CEs, KD_WEIGHT 0.9 on the three terms
    assert cls.recipes.dataset == {"views": {"x": "train", "strong": "strong"}}
    assert cls.pair_overrides("resnet32x4", "resnet8x4") == {"epochs": 240, "optim": {"lr": 0.025}}
    assert cls.pair_overrides("resnet32x4", "ShuffleV2") == {"epochs": 960, "optim": {"lr": 0.01}}
    assert cls.pair_overrides("ResNet50", "MobileNetV2") == {"epochs": 480, "optim": {"lr": 0.01}}
    assert cls.requires.live_teacher


# The strong pipeline ---------------------------------------------------------------------------------------------
def _image(seed: int, size: int, channels: int) -> Image.Image:
    a = torch.randint(30, 220, (size, size, channels), generator=torch.Generator().manual_seed(seed),
                      dtype=torch.uint8).numpy()
    return Image.fromarray(a[..., 0] if channels == 1 else a)


def _stats(img: Image.Image) -> dict[str, int]:
    a = np.asarray(img).astype(np.int64).ravel()
    return {"sum": int(a.sum()), "weighted": int((a * (np.arange(a.size) % 251)).sum())}


@pytest.mark.parametrize("case", REFERENCE["ops"], ids=lambda c: f"{c['name']}-{c['channels']}ch-u{c['u']}")
def test_each_op_equals_the_originals_at_the_same_draw(case):
    aug = FixMatchRandAugment()
    assert aug.ops[case["index"]][0] == case["name"]
    out = aug.apply(_image(case["seed"], case["size"], case["channels"]), [(case["index"], case["u"])], (0.0, 0, 0))
    assert _stats(out) == {"sum": case["sum"], "weighted": case["weighted"]}


@pytest.mark.parametrize("case", REFERENCE["cutout"], ids=lambda c: f"cutout{c['fraction']}")
def test_cutout_equals_the_originals_at_the_same_draw(case):
    out = fixmatch_cutout(_image(case["seed"], case["size"], case["channels"]), case["fraction"], case["u_x"],
                          case["u_y"])
    assert _stats(out) == {"sum": case["sum"], "weighted": case["weighted"]}


def test_strong_pipeline_differs_from_train_and_keeps_shape_and_normalisation():
    builder, info = _builder("cifar100"), CIFAR100_INFO
    train, strong = pipeline("train", builder, info, True), pipeline("strong", builder, info, True)
    mean, std = torch.tensor(info.mean).view(3, 1, 1), torch.tensor(info.std).view(3, 1, 1)
    image = torch.randint(0, 256, (3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for seed in range(6):
        torch.manual_seed(seed)
        plain = train(image)
        torch.manual_seed(seed)
        augmented = strong(image)  # the same crop and flip draws first, then RandAugment and cutout
        assert augmented.shape == plain.shape == (3, 32, 32) and augmented.dtype == torch.float32
        pixels = augmented * std + mean
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # normalised as train's: [0, 1] images
        assert torch.allclose(pixels * 255, (pixels * 255).round(), atol=1e-3)  # 8-bit, as the PIL ops give
        assert not torch.equal(augmented, plain)
        torch.manual_seed(seed)
        assert torch.equal(strong(image), augmented)  # every draw from torch's RNG: workers seed it
    digits = pipeline("strong", _builder("digits"), DIGITS_INFO, True)(torch.rand(1, 8, 8))
    assert digits.shape == (1, 8, 8)


# One step of a real program --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_program(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlkd")
    teacher = teacher_file(folder, "resnet8", num_classes=10, in_channels=1)
    loss = "{" + ", ".join(f"{k}: {v}" for k, v in LOSS.items()) + "}"
    cfg = load_config(CONFIGS / "digits" / "kd.yaml", [
        *FAST, "engine.precision=fp32", "dataset.subset=64", "dataset.batch_size=16", "seed=0",
        f"teacher.checkpoint={teacher}", f"loss={loss}", "dataset.views={x: train, strong: strong}"])
    return Offline.build(BuildContext(cfg=cfg, device=torch.device("cpu"), dist=DistInfo()))


def test_a_digits_step_reads_both_views_through_student_and_teacher(digits_program, monkeypatch):
    program = digits_program
    stream = program.data["train"]
    batch = stream.batch(next(iter(stream.loader(DistInfo()))))
    assert set(batch.views) == {"x", "strong"} and not torch.equal(batch.views["x"], batch.views["strong"])
    seen = {"student": [], "teacher": []}
    for name in seen:
        source = program.models[name].features
        original = source.forward

        def forward(x, original=original, name=name):
            features = original(x)
            seen[name].append((x, features.logits))
            return features
        monkeypatch.setattr(source, "forward", forward)
    program.train(True)
    terms = program.phases[-1].step(batch, StepInfo(0, 1, 0, 1))
    assert set(terms) == set(LOSS)
    for name in seen:  # one forward per view and network
        assert sorted(id(x) for x, _ in seen[name]) == sorted(id(v) for v in batch.views.values()), name
    logits = {(n, "x" if x is batch.views["x"] else "strong"): z.detach() for n in seen for x, z in seen[n]}
    assert terms["mlkd_strong_ce"].item() == pytest.approx(
        F.cross_entropy(logits["student", "strong"], batch.targets).item())
    expected = mlkd_losses(logits["student", "x"], logits["teacher", "x"], logits["student", "strong"],
                           logits["teacher", "strong"], [4.0, 3.0, 5.0, 2.0, 6.0])
    for key, value in expected.items():
        assert terms[f"mlkd_{key}"].item() == pytest.approx(value.item(), rel=1e-5), key
    student, teacher = program.models["student"].module, program.models["teacher"].features
    for term in ("mlkd_instance", "mlkd_batch", "mlkd_class", "mlkd_strong_ce"):
        student.zero_grad(set_to_none=True)
        terms[term].backward(retain_graph=True)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), term
        assert all(p.grad is None for p in teacher.parameters()), term


def test_a_recipe_without_the_strong_view_is_refused_in_one_line(digits_program):
    methods = {"mlkd": digits_program.trainable.methods["mlkd"]}
    check_views(methods, ("x", "strong"))
    with pytest.raises(ConfigError, match="no view 'strong'"):
        check_views(methods, ("x",))
